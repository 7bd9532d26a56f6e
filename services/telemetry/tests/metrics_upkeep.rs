//! A process nobody scrapes does not keep its histogram samples: the upkeep
//! thread `install_metrics` starts folds them into buckets and frees them.
//!
//! This binary counts the bytes its allocator holds (dhat's heap stats), so the samples' memory
//! is seen directly (RSS would hide it behind the allocator's caches).

use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

fn held() -> isize {
    dhat::HeapStats::get().curr_bytes as isize
}

const MIB: isize = 1 << 20;

#[test]
fn histogram_samples_are_freed_without_a_scrape() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let _handle = telemetry::install_metrics();
    let histogram = metrics::histogram!("chat_test_upkeep_seconds");
    histogram.record(0.001);
    let before = held();

    // A million samples: 8 MiB while they wait to be folded into buckets.
    for i in 0..1_000_000u32 {
        histogram.record(f64::from(i % 100) / 1000.0);
    }
    let recorded = held();
    assert!(
        recorded - before > 6 * MIB,
        "the samples should be held until upkeep: {} KiB more",
        (recorded - before) / 1024
    );

    let deadline = Instant::now() + telemetry::METRICS_UPKEEP_PERIOD * 4;
    loop {
        // Another sample pins the bucket's epoch, so the drained blocks the
        // upkeep deferred are reclaimed.
        histogram.record(0.001);
        let held = held();
        if held - before < MIB {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} KiB of samples still held {:?} after recording them",
            (held - before) / 1024,
            telemetry::METRICS_UPKEEP_PERIOD * 4
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
