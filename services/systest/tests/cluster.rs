//! Issue 14, point 7: a short recovery run against the 3-node cluster: the
//! node leading CHAT_EVENTS is SIGKILLed and restarted, one node is
//! partitioned (where namespaces work; on loopback a second leader kill
//! takes its place), and afterwards every client's events equal the stream
//! and every replica holds the same messages. Two violation kinds a leader
//! kill can still cause are tolerated, printed, until issue 14 fixes them
//! (see the test). Nothing the run made (nodes,
//! namespaces, links) outlives it.
//!
//! Needs the `gateway` and `worker` binaries next to this test's folder
//! (`cargo build --workspace` first, as `just test` does).

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::process::Command;

use chatctl::faults::FaultKind;
use chatctl::recovery::{self, RecoveryArgs};
use chatctl::verify::ViolationKind;

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
#[ignore = "issue 14: after a leader kill answers are still dead-lettered or doubled in about half the runs; run with `cargo test -p systest --test cluster -- --ignored` or `just recovery --cluster`"]
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
    // Issue 14 is open on what a leader kill can still do to an answer
    // (about one run in two here): dead-letter it while the stream's leader
    // moves (`failed_answer`, and `wrong_answer` for its missing text), or
    // store events after its terminal one (`extra_terminal`, a redelivered
    // job reading a lagging replica). They are printed above and tolerated
    // here until fixed; what every client receives must still be exactly the
    // stream (no gap, duplicate, reordering, mismatch, unexpected event,
    // missing terminal, unfinished session), and the replicas must agree.
    let known_open = [
        ViolationKind::FailedAnswer,
        ViolationKind::WrongAnswer,
        ViolationKind::ExtraTerminal,
    ];
    let others: Vec<_> = report
        .violations_by_kind
        .iter()
        .filter(|(kind, count)| **count > 0 && !known_open.contains(kind))
        .collect();
    assert!(others.is_empty(), "{others:?}\n{}", report.to_markdown());
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
