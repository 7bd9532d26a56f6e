//! The short `chatctl soak` (90 s): mixed load (asks, cancels,
//! regenerates, dropped sockets, new sessions) with a fault every 20 s,
//! every session audited, the processes and the store sampled every 10 s. It passes with
//! 0 violations, every move and fault kind happened, the store stays within
//! its retention, and the CSV and PNG are written.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chatctl::soak::{self, SoakArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_passes() {
    let out = tempfile::tempdir().unwrap();
    let args = SoakArgs {
        duration: Duration::from_secs(90),
        users: 40,
        answer_tokens: 60,
        fault_every_secs: 20,
        sample_secs: 10,
        out: out.path().to_path_buf(),
        ..SoakArgs::defaults()
    };
    let report = soak::run(&args).await.unwrap();
    println!("{}", report.to_markdown());
    assert!(report.passed(), "{}", report.to_markdown());
    let a = &report.activity;
    assert!(a.sessions > 40, "{a:?}");
    assert!(a.cancels > 0 && a.regenerates > 0 && a.drops > 0, "{a:?}");
    assert!(a.events_checked > a.questions, "{a:?}");
    for kind in ["drop", "gateway", "worker", "nats"] {
        assert!(
            report.faults_injected.keys().any(|k| k.as_str() == kind),
            "no {kind} fault: {:?}",
            report.faults_injected
        );
    }
    let csv = std::fs::read_to_string(&report.csv).unwrap();
    assert!(csv.lines().count() >= 9, "{csv}");
    assert!(csv.lines().next().unwrap().contains("gw-0_rss_kib"));
    let png = std::fs::read(&report.png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}
