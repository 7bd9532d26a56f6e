//! Answers to several questions of one session at once: the fences that
//! keep two runs of one message apart step past the other answers' events
//! instead of sending the run back to its admit step (or, after a few
//! tries, back to the queue as a needless next attempt).
#![allow(clippy::unwrap_used)]

mod support;

use futures::{FutureExt, StreamExt};
use protocol::{Event, MessageId, SessionId};
use support::{answer_of, Harness};
use worker::backends::demo;

#[tokio::test]
async fn an_answer_started_beside_another_of_its_session_is_not_restarted() {
    // The second question's first chunk may be stored only right after the
    // session's last event as its admit step read it; while its model
    // waits 60 ms for the first token, the first answer stores a chunk
    // every 10 ms. Reading the admit step again lost that race every time,
    // and the job was handed back and came again as attempt 2.
    let h = Harness::start(1500, 3).await;
    let worker = h
        .spawn_worker(&[
            "--concurrency",
            "2",
            "--demo-tokens-per-sec",
            "100",
            "--demo-first-token-ms",
            "60",
            "--demo-answer-tokens",
            "100",
            "--chunk-window-ms",
            "0",
        ])
        .await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let (first_prompt, second_prompt) = ("the first question", "the second question");
    let first = h.submit(session, first_prompt).await;
    live.until(|e| matches!(e, Event::Chunk { index: 1, .. }))
        .await;
    let second = h.submit(session, second_prompt).await;
    let mut finished = std::collections::HashSet::new();
    while finished.len() < 2 {
        match live.next().await.0 {
            Event::Done {
                message_id,
                attempt,
                ..
            } => {
                assert_eq!(attempt, 1, "{message_id:?} was answered again");
                finished.insert(message_id);
            }
            Event::Chunk { attempt: 1, .. } | Event::UserMessage { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    let events = h.stored_events(session).await;
    assert_eq!(
        answer_of(&events, first, 1),
        demo::answer(first_prompt, 100)
    );
    assert_eq!(
        answer_of(&events, second, 1),
        demo::answer(second_prompt, 100)
    );
    let position = |wanted: &dyn Fn(&Event) -> bool| events.iter().position(wanted).unwrap();
    let second_began =
        position(&|e| matches!(e, Event::Chunk { message_id, .. } if *message_id == second));
    let first_ended =
        position(&|e| matches!(e, Event::Done { message_id, .. } if *message_id == first));
    assert!(
        second_began < first_ended,
        "the two answers streamed side by side"
    );
    h.wait_queue_empty().await;
    assert_eq!(h.turns(session).await.len(), 2);
    worker.shutdown().await.unwrap();
}

/// The first chunk of attempt 1 of `message_id`.
fn first_chunk(message_id: MessageId, text: &str) -> Event {
    Event::Chunk {
        message_id,
        attempt: 1,
        index: 0,
        text: text.into(),
        published_at_us: None,
    }
}

/// Another question's first chunk, stored as its worker would.
async fn store_sibling_chunk(h: &Harness, session: SessionId) -> Event {
    let sibling = first_chunk(MessageId::new(), "meanwhile ");
    h.store_event(session, &sibling).await;
    sibling
}

/// Reads of the message's claims seen since, once the job is done: one
/// per admit step its run went through.
async fn later_claim_reads(h: &Harness, claim_reads: &mut async_nats::Subscriber) -> usize {
    // Every read was made before the job was acked, so before the queue
    // was seen empty; the flush brings in all the server routed before.
    h.client.flush().await.unwrap();
    let mut reads = 0;
    while let Some(Some(_)) = claim_reads.next().now_or_never() {
        reads += 1;
    }
    reads
}

#[tokio::test]
async fn a_restart_steps_past_another_answers_event() {
    // Attempt 2's `restart` is stored only right after the session's last
    // event as its admit step read it; another question's chunk is stored
    // in between.
    let h = Harness::start(1500, 5).await;
    let session = h.new_session().await;
    let prompt = "answered again beside another";
    let id = h.submit(session, prompt).await;
    let (worker, mut claim_reads) = h.attempt_2_paused_at_its_claim(session, id, "1000").await;
    let sibling = store_sibling_chunk(&h, session).await;
    h.wait_queue_empty().await;

    let events = h.stored_events(session).await;
    assert_eq!(events[1], sibling, "{events:?}");
    assert_eq!(
        events[2],
        Event::Restart {
            message_id: id,
            attempt: 2
        }
    );
    assert!(
        matches!(events.last(), Some(Event::Done { attempt: 2, .. })),
        "{events:?}"
    );
    assert_eq!(answer_of(&events, id, 2), demo::answer(prompt, 40));
    assert_eq!(
        later_claim_reads(&h, &mut claim_reads).await,
        0,
        "the run read its admit step again"
    );
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancel_at_admission_steps_past_another_answers_event() {
    // A cancel seen at admission is stored only right after the session's
    // last event as the admit step read it; another question's chunk is
    // stored in between.
    let h = Harness::start(1500, 5).await;
    let session = h.new_session().await;
    let id = h.submit(session, "cancelled beside another").await;
    h.cancel(session, id).await;
    let (worker, mut claim_reads) = h.attempt_2_paused_at_its_claim(session, id, "1000").await;
    let sibling = store_sibling_chunk(&h, session).await;
    h.wait_queue_empty().await;

    let events = h.stored_events(session).await;
    assert_eq!(
        events[1..],
        [sibling, Event::Cancelled { message_id: id }],
        "{events:?}"
    );
    assert_eq!(
        later_claim_reads(&h, &mut claim_reads).await,
        0,
        "the run read its admit step again"
    );
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_run_that_reads_its_admit_step_again_keeps_its_attempt() {
    // Attempt 1 (played by the test) stores a chunk after attempt 2's
    // admit step read the stream: attempt 2's `restart` is refused and it
    // reads again. Its own stored claim must not make it attempt 3.
    let h = Harness::start(1500, 5).await;
    let session = h.new_session().await;
    let prompt = "overtaken by its own first attempt";
    let id = h.submit(session, prompt).await;
    let (worker, mut claim_reads) = h.attempt_2_paused_at_its_claim(session, id, "1000").await;
    let late_chunk = first_chunk(id, "late ");
    h.store_event(session, &late_chunk).await;
    h.wait_queue_empty().await;

    let events = h.stored_events(session).await;
    assert_eq!(events[1], late_chunk, "{events:?}");
    assert_eq!(
        events[2],
        Event::Restart {
            message_id: id,
            attempt: 2
        },
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(Event::Done { attempt: 2, .. })),
        "{events:?}"
    );
    assert_eq!(answer_of(&events, id, 2), demo::answer(prompt, 40));
    assert_eq!(
        later_claim_reads(&h, &mut claim_reads).await,
        1,
        "the moved stream is read again, once"
    );
    worker.shutdown().await.unwrap();
}
