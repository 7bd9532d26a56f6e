//! Issue 4: a rolling restart. While sessions chat, every worker and then
//! every gateway is restarted with SIGTERM, one at a time, each back before
//! the next goes. Every answer completes and no client sees a gap or a
//! duplicate.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const TOKENS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_nothing() {
    let mut stack = support::start(
        3,
        3,
        true,
        &[
            ("DEMO_TOKENS_PER_SEC", "40"),
            ("DEMO_ANSWER_TOKENS", "40"),
            ("WORKER_SHUTDOWN_GRACE_SECS", "5"),
            ("GATEWAY_SHUTDOWN_GRACE_SECS", "5"),
        ],
    )
    .await;
    let base = stack.nginx_url();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut watches = Vec::new();
    for i in 0..50 {
        let mut client = support::client(&base).await;
        watches.push(client.progress());
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = support::deadline();
            let mut turn = 0;
            while turn == 0 || !stop.load(Ordering::Relaxed) {
                client
                    .ask(&support::prompt(i, turn), deadline)
                    .await
                    .unwrap();
                turn += 1;
            }
            client
        }));
    }
    let t = std::time::Instant::now();
    for w in &mut watches {
        support::wait_for(w, "a first chunk", |p| p.chunks >= 1).await;
    }
    eprintln!("all streaming after {:?}", t.elapsed());
    eprintln!("restarts begin");
    for i in 0..3 {
        let t = std::time::Instant::now();
        let status = stack.terminate_worker(i).await.unwrap();
        assert!(status.success(), "worker {i} exited with {status}");
        let stopped = t.elapsed();
        stack.restart_worker(i).await.unwrap();
        eprintln!(
            "worker {i}: stopped in {stopped:?}, back in {:?}",
            t.elapsed()
        );
    }
    for i in 0..3 {
        let t = std::time::Instant::now();
        let status = stack.terminate_gateway(i).await.unwrap();
        assert!(status.success(), "gateway {i} exited with {status}");
        let stopped = t.elapsed();
        stack.restart_gateway(i).await.unwrap();
        eprintln!(
            "gateway {i}: stopped in {stopped:?}, back in {:?}",
            t.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let t = std::time::Instant::now();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    eprintln!("sessions finished {:?} after the restarts", t.elapsed());
    let slowest = clients
        .iter()
        .flat_map(|c| c.log.asked.iter().map(move |a| (c, a)))
        .max_by_key(|(_, a)| a.finished_at.map(|f| f - a.sent_at))
        .unwrap();
    let took = slowest.1.finished_at.map(|f| f - slowest.1.sent_at);
    let events = slowest.0.log.events();
    let mine: Vec<_> = events
        .iter()
        .filter(|e| e.event.message_id() == Some(slowest.1.message_id))
        .collect();
    // Shown when the test is slow: which answer waited, and for what.
    eprintln!(
        "slowest answer took {took:?} (session {}, {} reconnect(s)): {}",
        slowest.0.session(),
        slowest.0.log.reconnects,
        chatctl::verify::timeline(&mine)
    );
    let t = std::time::Instant::now();
    support::assert_all_correct(&base, &mut clients, TOKENS).await;
    eprintln!("verified in {:?}", t.elapsed());
    let closes: u32 = clients.iter().map(|c| c.log.restart_closes).sum();
    assert!(
        closes > 0,
        "no client saw a 1012 close from a stopping gateway"
    );
}
