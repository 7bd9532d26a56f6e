//! A nats-server restart while a worker generates: the chunks in flight
//! lose their acks with the connection. The worker reads back, on the new
//! connection, which of them the stream stored, sends again the ones it did
//! not, and goes on with the same attempt: no `restart`, the model is not
//! asked again, and the job is never handed back to the queue (a handed-back
//! job came back only after the restarted server's own timers, 2.3 s in
//! `chatctl recovery`). One test in its own binary: it reads the worker's
//! process-wide metrics.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use protocol::Event;
use support::{answer_of, wait_until, Harness};
use worker::backends::demo;

#[tokio::test]
async fn a_restart_mid_answer_goes_on_from_what_was_stored() {
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
    assert!(
        matches!(done, Some(Event::Done { attempt: 1, .. })),
        "expected attempt 1 to finish: {events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::Restart { .. })),
        "the answer was started over: {events:?}"
    );
    // Every chunk once, in order: the answer is whole.
    let indexes: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Chunk { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    let expected: Vec<u32> = (0..u32::try_from(indexes.len()).unwrap()).collect();
    assert_eq!(indexes, expected, "{events:?}");
    assert_eq!(answer_of(&events, id, 1), demo::answer(prompt, 80));

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
