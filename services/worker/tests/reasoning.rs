//! A model that thinks: its reasoning is published as `reasoning` events,
//! coalesced like chunks and before them, kept out of the answer and the
//! history turn's text, and started over by a restart.
#![allow(clippy::unwrap_used)]

mod support;

use protocol::{Event, EventKind};
use support::{answer_of, kinds_of, reasoning_of, Harness};
use worker::backends::demo;

#[tokio::test]
async fn a_thinking_demo_stores_reasoning_then_chunks_then_done() {
    let h = Harness::start(1500, 3).await;
    let worker = h
        .spawn_worker(&[
            "--demo-tokens-per-sec",
            "400",
            "--demo-first-token-ms",
            "0",
            "--demo-answer-tokens",
            "40",
            "--demo-reasoning-tokens",
            "30",
            "--chunk-window-ms",
            "20",
        ])
        .await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let prompt = "Why is the sky blue?";
    let id = h.submit(session, prompt).await;

    let events = live.until(|e| e.is_terminal()).await;
    assert_eq!(
        kinds_of(&events, id),
        [
            EventKind::UserMessage,
            EventKind::Reasoning,
            EventKind::Chunk,
            EventKind::Done
        ],
        "{events:?}"
    );
    assert_eq!(reasoning_of(&events, id, 1), demo::reasoning(prompt, 30));
    assert_eq!(answer_of(&events, id, 1), demo::answer(prompt, 40));
    let thoughts = events
        .iter()
        .filter(|e| e.kind() == EventKind::Reasoning)
        .count();
    assert!(
        (2..30).contains(&thoughts),
        "reasoning is coalesced like chunks, got {thoughts} events"
    );
    assert!(
        matches!(events.last(), Some(Event::Done { usage: Some(u), .. }) if u.completion_tokens == 40),
        "usage counts the answer: {events:?}"
    );
    assert_eq!(h.stored_events(session).await, events);

    h.wait_queue_empty().await;
    let turns = h.turns(session).await;
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].assistant, demo::answer(prompt, 40));
    assert_eq!(
        turns[0].reasoning_chars,
        demo::reasoning(prompt, 30).chars().count() as u64
    );
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_run_after_unfinished_reasoning_restarts_it_from_zero() {
    // An earlier run stored only reasoning, and the job is back as
    // delivery 1 (a NATS restart can undercount): the new run announces
    // `restart` so a client drops that reasoning, and thinks again from 0.
    let h = Harness::start(3000, 3).await;
    let session = h.new_session().await;
    let prompt = "Think it over";
    let id = h.submit(session, prompt).await;
    for index in 0..2 {
        let earlier = Event::Reasoning {
            message_id: id,
            attempt: 1,
            index,
            text: format!("lost{index} "),
            published_at_us: None,
        };
        h.store_event(session, &earlier).await;
    }
    let mut live = h.live(session).await;
    let worker = h
        .spawn_worker(&[
            "--demo-tokens-per-sec",
            "0",
            "--demo-answer-tokens",
            "10",
            "--demo-reasoning-tokens",
            "8",
        ])
        .await;
    let events = live.until(|e| e.is_terminal()).await;
    assert_eq!(
        events.first(),
        Some(&Event::Restart {
            message_id: id,
            attempt: 2
        }),
        "{events:?}"
    );
    assert_eq!(reasoning_of(&events, id, 2), demo::reasoning(prompt, 8));
    assert_eq!(answer_of(&events, id, 2), demo::answer(prompt, 10));
    assert!(matches!(
        events.last(),
        Some(Event::Done { attempt: 2, .. })
    ));
    worker.shutdown().await.unwrap();
}
