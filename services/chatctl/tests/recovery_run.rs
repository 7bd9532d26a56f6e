//! Issue 3, test 5: a short `chatctl recovery` run with every kind of fault
//! reports zero violations.

#![allow(clippy::unwrap_used)]

use chatctl::recovery::{self, RecoveryArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_recovery_run_finds_no_violation() {
    let args = RecoveryArgs {
        sessions: 20,
        turns: 2,
        seed: 7,
        faults: Some(8),
        duration_secs: Some(12),
        deadline_secs: Some(45),
        ..RecoveryArgs::defaults()
    };
    let report = recovery::run(&args).await.unwrap();
    println!("{}", report.to_markdown());
    assert_eq!(report.messages, 40);
    assert!(report.events_checked > 40);
    assert!(report.passed(), "{}", report.to_markdown());
    assert!(
        report.faults_injected.values().sum::<usize>() >= 4,
        "too few faults injected: {:?}",
        report.faults_injected
    );
}
