//! A short `chatctl recovery` run with the grey kinds on one nats-server
//! (pause, disk-full, lossy-link) reports zero violations. A file of its
//! own, so it never runs at the same time as the other short run.

#![allow(clippy::unwrap_used)]

use chatctl::faults::FaultKind;
use chatctl::recovery::{self, RecoveryArgs};

/// The grey faults on one nats-server: nats-server, a gateway or a worker
/// SIGSTOPped for seconds, the store filled to its last byte and freed
/// (where root may mount its filesystem), every link to nats-server
/// dropping a share of its packets. Nothing lost, doubled or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_recovery_run_with_grey_faults_finds_no_violation() {
    let args = RecoveryArgs {
        sessions: 20,
        turns: 2,
        seed: 5,
        fault_kinds: Some("pause,disk-full,lossy-link".into()),
        faults: Some(5),
        duration_secs: Some(40),
        deadline_secs: Some(150),
        ..RecoveryArgs::defaults()
    };
    let report = recovery::run(&args).await.unwrap();
    println!("{}", report.to_markdown());
    assert_eq!(report.messages, 40);
    assert!(report.passed(), "{}", report.to_markdown());
    let kinds = &report.faults_injected;
    assert!(kinds.contains_key(&FaultKind::Pause), "{kinds:?}");
    assert!(kinds.contains_key(&FaultKind::LossyLink), "{kinds:?}");
    if stack::disk::small_disks_available() {
        assert!(kinds.contains_key(&FaultKind::DiskFull), "{kinds:?}");
    }
}
