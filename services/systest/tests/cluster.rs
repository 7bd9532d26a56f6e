//! Issue 14, point 7: a short recovery run against the 3-node cluster: the
//! node leading CHAT_EVENTS is SIGKILLed and restarted, one node is
//! partitioned (where namespaces work; on loopback a second leader kill
//! takes its place), and afterwards every client's events equal the stream
//! and every replica holds the same messages, with no violation at all.
//! Nothing the run made (nodes, namespaces, links) outlives it.
//!
//! Needs the `gateway` and `worker` binaries next to this test's folder
//! (`cargo build --workspace` first, as `just test` does).

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::process::Command;

use chatctl::faults::FaultKind;
use chatctl::recovery::{self, RecoveryArgs};

/// Namespaces this process made (`cq<pid>g…`, see `stack::hosts`).
fn our_namespaces() -> Vec<String> {
    let prefix = format!("cq{:x}g", std::process::id());
    let out = Command::new("ip").args(["netns", "list"]).output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_cluster_run_survives_a_leader_kill_and_a_partition() {
    let args = RecoveryArgs {
        cluster: true,
        sessions: 30,
        turns: 3,
        seed: 14,
        gateways: 2,
        workers: 2,
        fault_kinds: Some("node-kill,partition".into()),
        faults: Some(2),
        duration_secs: Some(12),
        deadline_secs: Some(90),
        ..RecoveryArgs::defaults()
    };
    let report = recovery::run(&args).await.unwrap();
    println!("{}", report.to_markdown());
    // Every client's events are exactly the stream, every answer whole
    // (read as PROTOCOL.md tells a client: a superseded attempt's late
    // chunks are ignored), one terminal event each.
    assert_eq!(report.violation_count(), 0, "{}", report.to_markdown());
    assert_eq!(report.failed_faults(), 0, "{}", report.to_markdown());
    assert_eq!(report.messages, 90);
    let replicas = report
        .replicas
        .as_ref()
        .expect("a cluster run checks replicas");
    assert!(replicas.converged);
    assert!(
        replicas
            .streams
            .iter()
            .any(|r| r.stream == "CHAT_EVENTS" && r.messages > 90),
        "{:?}",
        replicas.streams
    );
    let kills = report.faults_injected.get(&FaultKind::NodeKill).copied();
    let partitions = report.faults_injected.get(&FaultKind::Partition).copied();
    if report.cluster_hosts.as_deref() == Some("namespaces") {
        assert_eq!(
            (kills, partitions),
            (Some(1), Some(1)),
            "{:?}",
            report.faults
        );
    } else {
        assert_eq!(kills, Some(2), "{:?}", report.faults);
    }
    assert!(
        our_namespaces().is_empty(),
        "left behind: {:?}",
        our_namespaces()
    );
}
