//! A short recovery run against the 3-node cluster with the grey faults.
//! A file of its own, so it never runs at the same time as the other
//! cluster run (two clusters at once on two cores).
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

/// The grey faults on the cluster: the `CHAT_EVENTS` leader SIGSTOPped
/// (it wakes up still believing it leads), a node's store filled to the
/// last byte and freed, and one node's links dropping a share of their
/// packets. No violation, the replicas agree, nothing is left behind
/// (mounts, nftables tables, namespaces).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_cluster_run_survives_a_paused_leader_a_full_disk_and_a_lossy_link() {
    let args = RecoveryArgs {
        cluster: true,
        sessions: 20,
        turns: 3,
        seed: GREY_SEED,
        gateways: 2,
        workers: 2,
        fault_kinds: Some("pause,disk-full,lossy-link".into()),
        faults: Some(3),
        duration_secs: Some(30),
        deadline_secs: Some(120),
        ..RecoveryArgs::defaults()
    };
    let report = recovery::run(&args).await.unwrap();
    println!("{}", report.to_markdown());
    assert_eq!(report.violation_count(), 0, "{}", report.to_markdown());
    assert_eq!(report.failed_faults(), 0, "{}", report.to_markdown());
    assert_eq!(report.messages, 60);
    assert!(report.replicas.as_ref().is_some_and(|r| r.converged));
    assert!(report.faults_injected.contains_key(&FaultKind::Pause));
    assert!(report.faults_injected.contains_key(&FaultKind::LossyLink));
    if stack::disk::small_disks_available() {
        assert!(report.faults_injected.contains_key(&FaultKind::DiskFull));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    assert!(
        !mounts.contains("chat-stack-"),
        "a store's filesystem is still mounted"
    );
    let tables = Command::new("nft").args(["list", "tables"]).output();
    let tables = tables
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        !tables.contains(&format!("chat_loss_{}_", std::process::id())),
        "{tables}"
    );
    assert!(our_namespaces().is_empty(), "{:?}", our_namespaces());
}

/// A seed whose pause hits the `CHAT_EVENTS` leader (for 9.6 s: longer
/// than the election timeout), with n2's store filled and n3's links lossy.
const GREY_SEED: u64 = 12;
