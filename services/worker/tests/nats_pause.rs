//! nats-server paused (SIGSTOP) mid-answer for longer than the client's
//! pings allow: the worker's connection is dropped, made again once the
//! server wakes, and the answer goes on from what the stream stored, in the
//! same attempt: no `restart`, the model is not asked again, the job is not
//! handed back. One test in its own binary: it reads the worker's
//! process-wide metrics.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use std::time::Duration;

use protocol::Event;
use support::{answer_of, Harness};
use worker::backends::demo;

/// How long the server is paused: more than the two unanswered pings
/// (1 s apart) after which the client drops its connection.
const PAUSE: Duration = Duration::from_secs(4);

#[tokio::test]
async fn a_pause_mid_answer_goes_on_from_what_was_stored() {
    // ack_wait well above the pause: the lease is not what is tested.
    let h = Harness::start(15_000, 5).await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let prompt = "an answer across a paused nats-server";
    let id = h.submit(session, prompt).await;
    let worker = h
        .spawn_worker(&["--demo-tokens-per-sec", "20", "--demo-answer-tokens", "120"])
        .await;
    live.until(|e| matches!(e, Event::Chunk { attempt: 1, .. }))
        .await;
    h.server.freeze().unwrap();
    // The fault itself: a pause of a fixed length.
    tokio::time::sleep(PAUSE).await;
    h.server.thaw().unwrap();
    h.wait_queue_empty().await;

    let events = h.stored_events(session).await;
    assert!(
        matches!(
            events.iter().rev().find(|e| e.is_terminal()),
            Some(Event::Done { attempt: 1, .. })
        ),
        "expected attempt 1 to finish: {events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::Restart { .. })),
        "the answer was started over: {events:?}"
    );
    let indexes: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Chunk { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    let expected: Vec<u32> = (0..u32::try_from(indexes.len()).unwrap()).collect();
    assert_eq!(indexes, expected, "{events:?}");
    assert_eq!(answer_of(&events, id, 1), demo::answer(prompt, 120));
    worker.shutdown().await.unwrap();
}
