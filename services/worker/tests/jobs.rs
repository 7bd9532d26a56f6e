//! One worker answering jobs: chunks, done, history, session record, the
//! concurrency bound, and cancels of running and queued jobs.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use protocol::records::TurnStatus;
use protocol::{Event, FinishReason};
use support::{answer_of, wait_until, Harness};
use worker::backends::demo;

/// A 10 s answer (200 tokens at 20 tokens/s), a chunk per token: long
/// enough for a cancel to land mid-answer on any machine.
const LONG_ANSWER: &[&str] = &[
    "--demo-tokens-per-sec",
    "20",
    "--demo-first-token-ms",
    "0",
    "--demo-answer-tokens",
    "200",
    "--chunk-window-ms",
    "0",
];

#[tokio::test]
async fn a_job_streams_chunks_then_done_and_is_recorded() {
    let h = Harness::start(1500, 3).await;
    let worker = h
        .spawn_worker(&[
            "--demo-tokens-per-sec",
            "400",
            "--demo-first-token-ms",
            "0",
            "--demo-answer-tokens",
            "60",
            "--chunk-window-ms",
            "20",
        ])
        .await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let prompt = "How do I keep a sourdough starter alive?";
    let id = h.submit(session, prompt).await;

    let events = live.until(|e| e.is_terminal()).await;
    assert!(matches!(events[0], Event::UserMessage { .. }));
    let expected = demo::answer(prompt, 60);
    assert_eq!(answer_of(&events, id, 1), expected);
    let chunks = events
        .iter()
        .filter(|e| matches!(e, Event::Chunk { .. }))
        .count();
    assert!(chunks > 1, "a paced answer comes in several chunks");
    assert!(
        chunks < 60,
        "tokens are coalesced into chunks, got {chunks}"
    );
    match events.last().unwrap() {
        Event::Done {
            message_id,
            attempt,
            finish_reason,
            usage,
        } => {
            assert_eq!(*message_id, id);
            assert_eq!(*attempt, 1);
            assert_eq!(*finish_reason, FinishReason::Stop);
            assert_eq!(usage.unwrap().completion_tokens, 60);
        }
        other => panic!("expected done, got {other:?}"),
    }

    h.wait_queue_empty().await;
    let turns = h.turns(session).await;
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].message_id, id);
    assert_eq!(turns[0].status, TurnStatus::Done);
    assert_eq!(turns[0].assistant, expected);
    assert_eq!(turns[0].user, prompt);
    let record = h.record(session).await;
    assert!(record.active.is_empty());
    assert!(record.is_finished(id));
    // Everything live was stored, in the same order.
    assert_eq!(h.stored_events(session).await, events);

    let metrics = reqwest_get(worker.metrics_addr(), "/metrics").await;
    assert!(metrics.contains("chat_worker_jobs_total"), "{metrics}");
    assert!(metrics.contains("chat_worker_chunks_published_total"));
    let health = reqwest_get(worker.metrics_addr(), "/health").await;
    assert!(health.contains("\"connected\""), "{health}");
    worker.shutdown().await.unwrap();
}

async fn reqwest_get(addr: std::net::SocketAddr, path: &str) -> String {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn never_more_jobs_in_flight_than_the_concurrency() {
    let h = Harness::start(1500, 3).await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(h.submit(session, &format!("question number {i}")).await);
    }
    let worker = h
        .spawn_worker(&[
            "--concurrency",
            "2",
            "--demo-tokens-per-sec",
            "100",
            "--demo-first-token-ms",
            "0",
            "--demo-answer-tokens",
            "10",
            "--chunk-window-ms",
            "0",
        ])
        .await;
    let (mut running, mut max_running, mut done) =
        (std::collections::HashSet::new(), 0usize, 0usize);
    while done < 6 {
        let (event, _) = live.next().await;
        match event {
            Event::Chunk { message_id, .. } => {
                running.insert(message_id);
                max_running = max_running.max(running.len());
            }
            Event::Done { message_id, .. } => {
                assert!(running.remove(&message_id));
                done += 1;
            }
            Event::UserMessage { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(max_running, 2, "two at a time, and never more");
    h.wait_queue_empty().await;
    assert_eq!(h.turns(session).await.len(), 6);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_stops_a_running_answer_within_200_ms() {
    let h = Harness::start(1500, 3).await;
    let worker = h.spawn_worker(LONG_ANSWER).await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let prompt = "Tell me a long story";
    let id = h.submit(session, prompt).await;
    live.until(|e| matches!(e, Event::Chunk { index: 2, .. }))
        .await;

    let sent = Instant::now();
    h.cancel(session, id).await;
    let cancelled_at = loop {
        let (event, at) = live.next().await;
        if let Event::Cancelled { message_id } = event {
            assert_eq!(message_id, id);
            break at;
        }
    };
    let latency = cancelled_at - sent;
    assert!(
        latency < Duration::from_millis(200),
        "cancel took {latency:?}"
    );

    h.wait_queue_empty().await;
    let events = h.stored_events(session).await;
    let cancelled = events
        .iter()
        .filter(|e| matches!(e, Event::Cancelled { .. }))
        .count();
    assert_eq!(cancelled, 1);
    assert!(!events.iter().any(|e| matches!(e, Event::Done { .. })));
    assert!(matches!(events.last().unwrap(), Event::Cancelled { .. }));
    let text = answer_of(&events, id, 1);
    assert!(!text.is_empty());
    assert!(demo::answer(prompt, 200).starts_with(&text));
    let turns = h.turns(session).await;
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].status, TurnStatus::Cancelled);
    assert_eq!(turns[0].assistant, text);
    assert!(h.record(session).await.is_finished(id));
    let flag = protocol::subjects::cancel_flag_key(session, id);
    wait_until(|| async { h.layout.sessions.get(flag.clone()).await.unwrap().is_none() }).await;
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancel_whose_notice_was_lost_is_found_through_its_flag() {
    // Progress acks every 500 ms (ack_wait / 3); the answer would take 10 s.
    let h = Harness::start(1500, 3).await;
    let worker = h.spawn_worker(LONG_ANSWER).await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let id = h.submit(session, "a long story, please").await;
    live.until(|e| matches!(e, Event::Chunk { .. })).await;
    // The gateway's flag, without its core notice (lost in a reconnect).
    h.layout
        .sessions
        .put(protocol::subjects::cancel_flag_key(session, id), "1".into())
        .await
        .unwrap();
    let events = live.until(|e| e.is_terminal()).await;
    assert_eq!(
        events.last(),
        Some(&Event::Cancelled { message_id: id }),
        "the answer stopped as cancelled, not finished"
    );
    h.wait_queue_empty().await;
    let stored = h.stored_events(session).await;
    assert_eq!(stored.iter().filter(|e| e.is_terminal()).count(), 1);
    assert_eq!(h.turns(session).await[0].status, TurnStatus::Cancelled);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_queued_job_with_a_cancel_flag_never_starts() {
    let h = Harness::start(1500, 3).await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let id = h.submit(session, "never mind").await;
    // The cancel lands while the job waits in the queue (no worker yet).
    h.cancel(session, id).await;
    let worker = h
        .spawn_worker(&["--demo-tokens-per-sec", "0", "--demo-first-token-ms", "0"])
        .await;
    let events = live.until(|e| e.is_terminal()).await;
    assert!(matches!(events.last().unwrap(), Event::Cancelled { .. }));
    h.wait_queue_empty().await;
    let stored = h.stored_events(session).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(matches!(stored[0], Event::UserMessage { .. }));
    assert_eq!(stored[1], Event::Cancelled { message_id: id });
    let turns = h.turns(session).await;
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].status, TurnStatus::Cancelled);
    assert!(turns[0].assistant.is_empty());
    assert!(h.record(session).await.active.is_empty());
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_model_the_backend_does_not_serve_is_a_bad_request() {
    let h = Harness::start(1500, 3).await;
    let worker = h
        .spawn_worker(&["--demo-tokens-per-sec", "0", "--models", "house-model"])
        .await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let served = h
        .submit_for_model(session, "hello", Some("house-model"))
        .await;
    let refused = h.submit_for_model(session, "hello", Some("gpt-9")).await;
    let mut done = false;
    let mut error = None;
    while !(done && error.is_some()) {
        match live.next().await.0 {
            Event::Done { message_id, .. } if message_id == served => done = true,
            Event::Error {
                message_id, code, ..
            } => error = Some((message_id, code)),
            _ => {}
        }
    }
    assert_eq!(
        error,
        Some((Some(refused), protocol::ErrorCode::BadRequest))
    );
    h.wait_queue_empty().await;
    let record = h.record(session).await;
    assert!(record.is_finished(served) && record.is_finished(refused));
    worker.shutdown().await.unwrap();
}
