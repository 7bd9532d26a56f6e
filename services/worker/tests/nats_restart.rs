//! A nats-server restart while a worker generates: the chunks in flight
//! lose their acks with the connection, and the worker starts the answer
//! over on the new connection itself (a `restart`, the next attempt), with
//! the job never handed back to the queue. A handed-back job came back only
//! after the restarted server's own timers (2.3 s in `chatctl recovery`).
//! One test in its own binary: it reads the worker's process-wide metrics.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use protocol::Event;
use support::{answer_of, wait_until, Harness};
use worker::backends::demo;

#[tokio::test]
async fn a_restart_mid_answer_is_started_over_in_place_not_handed_back() {
    let mut h = Harness::start(5000, 5).await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let prompt = "an answer across a nats-server restart";
    let id = h.submit(session, prompt).await;
    let worker = h
        .spawn_worker(&["--demo-tokens-per-sec", "40", "--demo-answer-tokens", "80"])
        .await;
    live.until(|e| matches!(e, Event::Chunk { attempt: 1, .. }))
        .await;
    // Frozen, the server acks nothing: once the worker has published
    // another chunk, an ack is outstanding when the server goes.
    let published = metric(&worker, "chat_worker_chunks_published_total", "").await;
    h.server.freeze().unwrap();
    wait_until(|| async {
        metric(&worker, "chat_worker_chunks_published_total", "").await > published
    })
    .await;
    h.server.restart().unwrap();
    h.reconnect().await;
    h.wait_queue_empty().await;

    let events = h.stored_events(session).await;
    let done = events.iter().rev().find(|e| e.is_terminal());
    let Some(Event::Done { attempt, .. }) = done else {
        panic!("expected a done event: {events:?}");
    };
    assert!(*attempt >= 2, "the answer was not started over: {events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Restart { attempt: a, .. } if a == attempt)),
        "{events:?}"
    );
    assert_eq!(answer_of(&events, id, *attempt), demo::answer(prompt, 80));

    let jobs = "chat_worker_jobs_total";
    assert_eq!(metric(&worker, jobs, "outcome=\"done\"").await, 1.0);
    assert_eq!(
        metric(&worker, jobs, "outcome=\"redelivered\"").await,
        0.0,
        "handed back to the queue"
    );
    worker.shutdown().await.unwrap();
}

/// The value of the worker's metric `name` on the line that contains
/// `label` (0 when there is none).
async fn metric(worker: &worker::RunningWorker, name: &str, label: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", worker.metrics_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
}
