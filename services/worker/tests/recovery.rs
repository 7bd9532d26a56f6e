//! Jobs survive their workers: redelivery after a worker died, dead letters
//! through the server's max-deliveries advisory, and a graceful shutdown
//! that hands running jobs to another worker at once.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use protocol::records::{DeadLetter, TurnStatus};
use protocol::{stored, subjects, CancelNotice, ErrorCode, Event, MessageId, SessionId};
use support::{answer_of, wait_until, Harness, Live, FAST};
use worker::backends::demo;

/// A demo worker that takes 10 s over its answer.
const SLOW: &[&str] = &["--demo-tokens-per-sec", "20", "--demo-answer-tokens", "200"];

/// A new session whose question a worker started with `worker_args` is
/// answering: attempt 1's first chunk has arrived on `live`.
async fn answer_under_way(
    h: &Harness,
    prompt: &str,
    worker_args: &[&str],
) -> (SessionId, MessageId, Live, worker::RunningWorker) {
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let id = h.submit(session, prompt).await;
    let worker = h.spawn_worker(worker_args).await;
    live.until(|e| matches!(e, Event::Chunk { attempt: 1, .. }))
        .await;
    (session, id, live, worker)
}

/// Stores what a later attempt's admit step stores on the stream before
/// anything else: its claim on the message's claims subject, then its
/// `restart`.
async fn take_over_on_the_stream(h: &Harness, session: SessionId, id: MessageId, attempt: u32) {
    let claim = CancelNotice {
        message_id: id,
        claimed_by: Some("another-worker/1/1".into()),
        attempt: Some(attempt),
    };
    h.js.publish(subjects::claims(session, id), claim.to_payload())
        .await
        .unwrap()
        .await
        .unwrap();
    let takeover = Event::Restart {
        message_id: id,
        attempt,
    };
    h.store_event(session, &takeover).await;
}

/// `events` hold the demo's whole answer to `prompt` as attempt 2, ending
/// in its `done`, announced by its `restart` at `restart_at`.
fn assert_answered_by_attempt_2(events: &[Event], restart_at: usize, id: MessageId, prompt: &str) {
    assert_eq!(
        events.get(restart_at),
        Some(&Event::Restart {
            message_id: id,
            attempt: 2
        }),
        "{events:?}"
    );
    assert_eq!(answer_of(events, id, 2), demo::answer(prompt, 40));
    assert!(
        matches!(events.last(), Some(Event::Done { attempt: 2, .. })),
        "{events:?}"
    );
}

/// The attempts whose claims the message's claims subject holds, in order.
async fn stored_claims(h: &Harness, session: SessionId, id: MessageId) -> Vec<u32> {
    let subject = subjects::claims(session, id);
    let events = h.js.get_stream(subjects::EVENTS_STREAM).await.unwrap();
    stored::read_range(&h.js.client(), &events, &subject, 1, u64::MAX, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|s| {
            let notice: CancelNotice = serde_json::from_slice(&s.payload).unwrap();
            notice.attempt.unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_job_abandoned_by_a_dead_worker_is_restarted_and_answered() {
    let h = Harness::start(1500, 3).await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let prompt = "What is a work queue?";
    let id = h.submit(session, prompt).await;
    assert_eq!(h.take_and_abandon().await, 1);

    let worker = h.spawn_worker(FAST).await;
    let events = live.until(|e| e.is_terminal()).await;
    let restart = events
        .iter()
        .position(|e| matches!(e, Event::Restart { .. }))
        .expect("a restart event");
    assert_eq!(
        events[restart],
        Event::Restart {
            message_id: id,
            attempt: 2
        }
    );
    let first_chunk = events
        .iter()
        .position(|e| matches!(e, Event::Chunk { .. }))
        .unwrap();
    assert!(
        restart < first_chunk,
        "restart comes before the new attempt"
    );
    assert_eq!(answer_of(&events, id, 2), demo::answer(prompt, 40));
    assert!(matches!(
        events.last().unwrap(),
        Event::Done { attempt: 2, .. }
    ));
    h.wait_queue_empty().await;
    let turns = h.turns(session).await;
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].attempt, 2);
    // Attempt 2 claimed the message on the stream before its `restart`.
    assert_eq!(stored_claims(&h, session, id).await, [2]);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_run_after_an_unfinished_run_with_an_undercounted_delivery_announces_restart() {
    // What a NATS restart can leave: chunks of attempt 1 in the stream, and
    // the job back in the queue as delivery 1 again. The new run must not
    // stream "attempt 1" from index 0 a second time.
    let h = Harness::start(3000, 3).await;
    let session = h.new_session().await;
    let prompt = "What survives a restart?";
    let id = h.submit(session, prompt).await;
    for index in 0..3 {
        let earlier = Event::Chunk {
            message_id: id,
            attempt: 1,
            index,
            text: format!("lost{index} "),
            published_at_us: None,
        };
        h.store_event(session, &earlier).await;
    }
    let mut live = h.live(session).await;
    let worker = h.spawn_worker(FAST).await;
    let events = live.until(|e| e.is_terminal()).await;
    assert_answered_by_attempt_2(&events, 0, id, prompt);
    worker.shutdown().await.unwrap();
}

/// What a NATS restart can also leave: the job delivered again as delivery
/// 1 while the run that had it still runs, and that run's first chunk
/// stored only after the new run's admit step read the stream. Both count
/// themselves attempt 1 (recovery run, seed 7: `chunk a1 #0` at two
/// sequences). Returns once the other run's chunk is stored, while the
/// worker's run waits for its model's first token.
async fn another_first_run_stores_after_the_admit_read(
    h: &Harness,
    prompt: &str,
) -> (SessionId, MessageId, Live, worker::RunningWorker) {
    let session = h.new_session().await;
    let mut notices = h.client.subscribe(subjects::cancel(session)).await.unwrap();
    h.client.flush().await.unwrap();
    let id = h.submit(session, prompt).await;
    let live = h.live(session).await;
    let worker = h
        .spawn_worker(&[
            "--demo-tokens-per-sec",
            "1000",
            "--demo-first-token-ms",
            "1500",
            "--demo-answer-tokens",
            "40",
        ])
        .await;
    // The worker's claim notice: its admit step has read the stream.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let notice = notices.next().await.unwrap();
            let notice: CancelNotice = serde_json::from_slice(&notice.payload).unwrap();
            if notice.message_id == id && notice.attempt == Some(1) {
                break;
            }
        }
    })
    .await
    .expect("the worker's claim notice");
    let other = Event::Chunk {
        message_id: id,
        attempt: 1,
        index: 0,
        text: "other ".into(),
        published_at_us: None,
    };
    h.store_event(session, &other).await;
    (session, id, live, worker)
}

#[tokio::test]
async fn a_run_that_counts_itself_first_after_another_run_stored_since_its_read_announces_restart()
{
    let h = Harness::start(3000, 3).await;
    let prompt = "Who is first?";
    let (session, id, mut live, worker) =
        another_first_run_stores_after_the_admit_read(&h, prompt).await;
    let events = live.until(|e| e.is_terminal()).await;
    let first_attempts = events
        .iter()
        .filter(|e| matches!(e, Event::Chunk { attempt: 1, .. }))
        .count();
    assert_eq!(first_attempts, 1, "attempt 1 streamed twice: {events:?}");
    assert_answered_by_attempt_2(&events, 1, id, prompt);
    assert_eq!(stored_claims(&h, session, id).await, [2]);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_first_run_ending_before_its_first_event_after_another_run_stored_claims_the_message() {
    // The same race, the worker's run cancelled before its first token: its
    // `cancelled` has no claim to fence it, so it must follow what its admit
    // step read. Stored after the other run's chunk, it would leave that
    // run free to store its own terminal event too (no claim refuses it).
    let h = Harness::start(3000, 3).await;
    let (session, id, mut live, worker) =
        another_first_run_stores_after_the_admit_read(&h, "Who stops first?").await;
    h.cancel(session, id).await;
    let events = live.until(|e| e.is_terminal()).await;
    assert_eq!(
        events.last(),
        Some(&Event::Cancelled { message_id: id }),
        "{events:?}"
    );
    assert_eq!(stored_claims(&h, session, id).await, [2]);
    // The other run's terminal event, fenced as it fences it (its claims
    // subject still empty): refused.
    let done = Event::Done {
        message_id: id,
        attempt: 1,
        finish_reason: protocol::FinishReason::Stop,
        usage: None,
    };
    let fenced = PublishMessage::build()
        .payload(done.to_payload())
        .expected_last_subject_sequence(0)
        .header(
            subjects::HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            subjects::claims(session, id).as_str(),
        );
    let stored =
        h.js.send_publish(subjects::events(session), fenced)
            .await
            .unwrap()
            .await;
    assert!(stored.is_err(), "a second terminal event was stored");
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_job_that_exhausts_its_deliveries_is_dead_lettered_once() {
    let h = Harness::start(1000, 2).await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let id = h.submit(session, "this one keeps killing workers").await;
    assert_eq!(h.take_and_abandon().await, 1);
    assert_eq!(h.take_and_abandon().await, 2);

    // Two workers in the advisory's queue group: only one dead-letters it.
    let a = h.spawn_worker(FAST).await;
    let b = h.spawn_worker(FAST).await;
    let events = live.until(|e| e.is_terminal()).await;
    match events.last().unwrap() {
        Event::Error {
            message_id, code, ..
        } => {
            assert_eq!(*message_id, Some(id));
            assert_eq!(*code, ErrorCode::RetriesExhausted);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(!events.iter().any(|e| matches!(e, Event::Chunk { .. })));
    h.wait_queue_empty().await;

    let dead_subject = subjects::dead(session);
    let last = stored::last_seq(&h.layout.dead, &dead_subject)
        .await
        .unwrap();
    let letters: Vec<DeadLetter> = stored::read_range(
        &h.client,
        &h.layout.dead,
        &dead_subject,
        1,
        last,
        usize::MAX,
    )
    .await
    .unwrap()
    .into_iter()
    .map(|s| serde_json::from_slice(&s.payload).unwrap())
    .collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].request.message_id, id);
    assert_eq!(letters[0].deliveries, 2);
    wait_until(|| async { h.record(session).await.is_finished(id) }).await;
    let turns = h.turns(session).await;
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].status, TurnStatus::Failed);

    // Nothing more arrives for it: no second error, no answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = h.stored_events(session).await;
    let errors = stored
        .iter()
        .filter(|e| matches!(e, Event::Error { .. }))
        .count();
    assert_eq!(errors, 1, "{stored:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_hands_a_running_job_to_another_worker_at_once() {
    // A long ack_wait: a redelivery through it would come seconds late.
    let h = Harness::start(6000, 3).await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let prompt = "Explain graceful shutdown";
    // 2 tokens/s: the answer takes 20 s, so however loaded the machine,
    // the shutdown below lands mid-answer.
    let slow = h
        .spawn_worker(&[
            "--demo-tokens-per-sec",
            "2",
            "--demo-first-token-ms",
            "0",
            "--demo-answer-tokens",
            "40",
            "--chunk-window-ms",
            "0",
            "--shutdown-grace-secs",
            "0.3",
        ])
        .await;
    let id = h.submit(session, prompt).await;
    live.until(|e| matches!(e, Event::Chunk { .. })).await;
    let other = h.spawn_worker(FAST).await;

    let stopping = Instant::now();
    slow.shutdown().await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(3));
    let events = live.until(|e| e.is_terminal()).await;
    let restart_at = events
        .iter()
        .position(|e| matches!(e, Event::Restart { attempt: 2, .. }))
        .unwrap_or_else(|| panic!("the other worker announces a restart: {events:?}"));
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "the job came back at once, not after ack_wait ({:?})",
        stopping.elapsed()
    );
    // The stopping worker published nothing terminal for its attempt.
    assert!(!events[..restart_at]
        .iter()
        .any(|e| e.is_terminal() || matches!(e, Event::Restart { .. })));
    assert_eq!(answer_of(&events, id, 2), demo::answer(prompt, 40));
    assert!(matches!(
        events.last().unwrap(),
        Event::Done { attempt: 2, .. }
    ));
    h.wait_queue_empty().await;
    other.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_worker_whose_job_was_claimed_by_another_stops_silently() {
    // The job is redelivered while this worker still runs it (its lease was
    // lost unnoticed): the new claimant's notice must stop it, with no
    // terminal event and no ack, so two answers never stream at once.
    let h = Harness::start(3000, 3).await;
    let (session, id, mut live, worker) =
        answer_under_way(&h, "a slow answer to take over", SLOW).await;
    let claim = protocol::CancelNotice {
        message_id: id,
        claimed_by: Some("another-worker/1/0".into()),
        attempt: Some(2),
    };
    h.client
        .publish(subjects::cancel(session), claim.to_payload())
        .await
        .unwrap();
    h.client.flush().await.unwrap();
    // Within a few chunk intervals the stream goes quiet, and stays so.
    let quiet = tokio::time::timeout(Duration::from_millis(400), async {
        loop {
            let (event, _) = live.next().await;
            assert!(
                !event.is_terminal(),
                "a superseded attempt stored {event:?}"
            );
        }
    });
    let _ = quiet.await;
    let after = tokio::time::timeout(Duration::from_millis(800), live.next()).await;
    assert!(
        after.is_err(),
        "the superseded worker kept publishing: {after:?}"
    );
    assert_eq!(
        h.queued_jobs().await,
        1,
        "the job was not acked: it belongs to the claimant"
    );
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_message_whose_answer_is_stored_is_never_generated_again() {
    // An earlier attempt stored its chunks and `done`, then lost its history
    // turn, its session-record update and its ack (NATS went away between
    // the writes): the job is still queued. The stream is the truth.
    let h = Harness::start(1500, 3).await;
    let session = h.new_session().await;
    let id = h
        .submit(session, "answered before the lights went out")
        .await;
    let stored_answer = [
        Event::Chunk {
            message_id: id,
            attempt: 1,
            index: 0,
            text: "Already ".into(),
            published_at_us: Some(1),
        },
        Event::Chunk {
            message_id: id,
            attempt: 1,
            index: 1,
            text: "answered.".into(),
            published_at_us: Some(2),
        },
        Event::Done {
            message_id: id,
            attempt: 1,
            finish_reason: protocol::FinishReason::Stop,
            usage: None,
        },
    ];
    for event in &stored_answer {
        h.store_event(session, event).await;
    }
    let worker = h.spawn_worker(FAST).await;
    h.wait_queue_empty().await;
    let turns = h.turns(session).await;
    assert_eq!(turns.len(), 1, "{turns:?}");
    assert_eq!(turns[0].status, TurnStatus::Done);
    assert_eq!(turns[0].assistant, "Already answered.");
    assert!(h.record(session).await.is_finished(id));
    let events = h.stored_events(session).await;
    assert_eq!(
        events[1..],
        stored_answer,
        "nothing published after the stored answer: no second run, no second done"
    );
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_attempt_superseded_on_the_stream_stores_no_terminal_event() {
    // Issue 14 (found by `chatctl recovery --cluster`): the job was
    // delivered again while this worker still ran it, and the new attempt's
    // `restart` is stored, but its core claim notice never arrived. The old
    // attempt must not store `done`: the first terminal event the session
    // gets is the later attempt's.
    let h = Harness::start(1500, 5).await;
    let (session, id, mut live, worker) = answer_under_way(
        &h,
        "an answer taken over on the stream",
        &["--demo-tokens-per-sec", "40", "--demo-answer-tokens", "30"],
    )
    .await;
    take_over_on_the_stream(&h, session, id, 2).await;
    let events = live.until(|e| e.is_terminal()).await;
    match events.last() {
        // The next delivery (2) answers; attempt 1 must not have.
        Some(Event::Done { attempt, .. }) => assert!(
            *attempt >= 2,
            "the superseded attempt {attempt} stored its terminal event: {events:?}"
        ),
        other => panic!("expected a done event, got {other:?}"),
    }
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_attempt_superseded_on_the_stream_stops_generating_without_the_notice() {
    // As above, the new attempt's `restart` is stored and its claim notice
    // lost; the old attempt must also stop generating (tokens are billed)
    // within a progress interval (ack_wait / 3 = 0.5 s here), long before
    // its 10 s answer would end. Its chunks stored in between are stale.
    let h = Harness::start(1500, 5).await;
    let (session, id, mut live, worker) =
        answer_under_way(&h, "a long answer taken over", SLOW).await;
    // What attempt 2's admit step stores: its claim, then its `restart`.
    h.layout
        .sessions
        .put(subjects::claim_key(session, id), "2".into())
        .await
        .unwrap();
    take_over_on_the_stream(&h, session, id, 2).await;
    live.until(|e| matches!(e, Event::Restart { attempt: 2, .. }))
        .await;
    // Attempt 1's chunks stop within a progress interval or two: a quiet
    // second follows well within 3 s, while the answer had 9 s to go.
    let quiet_second = async {
        loop {
            match tokio::time::timeout(Duration::from_secs(1), live.next()).await {
                Err(_) => return,
                Ok((event, _)) => assert!(
                    !event.is_terminal(),
                    "the superseded attempt stored {event:?}"
                ),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), quiet_second)
        .await
        .expect("the superseded attempt kept generating");
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_job_is_kept_through_an_admit_step_longer_than_its_ack_wait() {
    // An admit step that waits (here 4 s, as when its reads wait out a
    // stream's election) outlasts ack_wait (1.5 s). The lease is kept by
    // progress acks through every step, so the job is not delivered again
    // meanwhile: one attempt answers, no `restart`.
    let h = Harness::start(1500, 5).await;
    let session = h.new_session().await;
    let prompt = "a patient admission";
    let id = h.submit(session, prompt).await;
    let mut args = FAST.to_vec();
    args.extend(["--test-admit-pause-ms", "4000"]);
    let worker = h.spawn_worker(&args).await;
    h.wait_queue_empty().await;
    let events = h.stored_events(session).await;
    assert!(
        !events.iter().any(|e| matches!(e, Event::Restart { .. })),
        "the job was delivered again while admitted: {events:?}"
    );
    assert!(matches!(
        events.last(),
        Some(Event::Done { attempt: 1, .. })
    ));
    assert_eq!(answer_of(&events, id, 1), demo::answer(prompt, 40));
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_run_the_delivery_count_forgot_follows_the_stored_claim() {
    // Attempt 3 claimed the message, then nats-server restarted and forgot
    // the deliveries: the job comes back as delivery 1. The stored claim
    // makes this run attempt 4 (a `restart` first), so it is never taken
    // for the earlier attempt a later claim would stop.
    let h = Harness::start(1500, 5).await;
    let session = h.new_session().await;
    let prompt = "after a forgetful restart";
    let id = h.submit(session, prompt).await;
    h.layout
        .sessions
        .put(subjects::claim_key(session, id), "3".into())
        .await
        .unwrap();
    let worker = h.spawn_worker(FAST).await;
    h.wait_queue_empty().await;
    let events = h.stored_events(session).await;
    assert!(
        matches!(events.get(1), Some(Event::Restart { attempt: 4, .. })),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(Event::Done { attempt: 4, .. })),
        "{events:?}"
    );
    assert_eq!(answer_of(&events, id, 4), demo::answer(prompt, 40));
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancel_seen_at_admission_ends_a_message_an_earlier_run_ended_meanwhile_once() {
    // Found by `chatctl soak` at a nats-server restart: attempt 1 stored
    // `cancelled` after attempt 2's admit step read the stream and before
    // attempt 2 stored its claim, so the claims fence let attempt 2 store a
    // second `cancelled`. Attempt 1 is played by the test here, its
    // `cancelled` fenced on the claims subject as a worker's is; the worker
    // runs attempt 2 and pauses between reading the last claim (after its
    // admit reads) and storing its own.
    let h = Harness::start(1500, 5).await;
    let session = h.new_session().await;
    let id = h.submit(session, "cancelled twice over?").await;
    h.cancel(session, id).await;
    let claims = subjects::claims(session, id);
    let (worker, _) = h.attempt_2_paused_at_its_claim(session, id, "3000").await;
    let attempt_1_ends = async_nats::jetstream::message::PublishMessage::build()
        .payload(Event::Cancelled { message_id: id }.to_payload())
        .expected_last_subject_sequence(0)
        .header(
            subjects::HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            claims.as_str(),
        );
    h.js.send_publish(subjects::events(session), attempt_1_ends)
        .await
        .unwrap()
        .await
        .expect("attempt 1's cancelled is stored before attempt 2's claim");
    h.wait_queue_empty().await;
    let events = h.stored_events(session).await;
    let terminals: Vec<&Event> = events
        .iter()
        .filter(|e| e.is_terminal() && e.message_id() == Some(id))
        .collect();
    assert_eq!(
        terminals,
        [&Event::Cancelled { message_id: id }],
        "{events:?}"
    );
    let turns = h.turns(session).await;
    assert_eq!(turns.len(), 1, "{turns:?}");
    assert_eq!(turns[0].status, TurnStatus::Cancelled);
    assert_eq!(stored_claims(&h, session, id).await, [2]);
    worker.shutdown().await.unwrap();
}
