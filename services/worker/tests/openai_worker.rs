//! The worker with `--backend openai` end to end: a real nats-server, the
//! worker in-process, and a scripted OpenAI-compatible server on loopback.
#![allow(clippy::unwrap_used)]

mod openai_support;
mod support;

use std::time::Duration;

use openai_support::{sse, Script, ScriptedServer, Step};
use protocol::records::TurnStatus;
use protocol::{ErrorCode, Event, FinishReason, MessageId};
use serde_json::json;
use support::{answer_of, kinds_of, reasoning_of, wait_until, Harness};

async fn openai_worker(h: &Harness, server: &ScriptedServer) -> worker::RunningWorker {
    openai_worker_with(h, server, &["--openai-first-token-timeout-secs", "5"]).await
}

/// A worker on the scripted server with `extra` flags (flags may not repeat).
async fn openai_worker_with(
    h: &Harness,
    server: &ScriptedServer,
    extra: &[&str],
) -> worker::RunningWorker {
    let base_url = server.base_url();
    let mut args = vec![
        "--backend",
        "openai",
        "--openai-base-url",
        &base_url,
        "--openai-model",
        "test-model",
        "--chunk-window-ms",
        "0",
    ];
    args.extend_from_slice(extra);
    h.spawn_worker(&args).await
}

/// The chunk texts of one message, in order.
fn chunks_of(events: &[Event], id: MessageId) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Chunk {
                message_id, text, ..
            } if *message_id == id => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn is_terminal_of(id: MessageId) -> impl FnMut(&Event) -> bool {
    move |e| {
        e.is_terminal()
            && matches!(e,
                Event::Done { message_id, .. }
                | Event::Cancelled { message_id }
                | Event::Error { message_id: Some(message_id), .. } if *message_id == id)
    }
}

#[tokio::test]
async fn a_server_error_is_retried_and_the_next_attempt_answers() {
    let h = Harness::start(1500, 3).await;
    let server = ScriptedServer::start(vec![
        Script::status(500, r#"{"error":{"message":"warming up"}}"#),
        Script::answer(&["The ", "answer ", "is ", "42."]),
    ])
    .await;
    let worker = openai_worker(&h, &server).await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let id = h.submit(session, "What is the answer?").await;

    let events = live.until(is_terminal_of(id)).await;
    assert!(matches!(events[0], Event::UserMessage { .. }), "{events:?}");
    assert_eq!(
        events[1],
        Event::Restart {
            message_id: id,
            attempt: 2
        },
        "{events:?}"
    );
    assert_eq!(answer_of(&events, id, 1), "", "attempt 1 produced nothing");
    assert_eq!(answer_of(&events, id, 2), "The answer is 42.");
    match events.last().unwrap() {
        Event::Done {
            attempt,
            finish_reason,
            usage,
            ..
        } => {
            assert_eq!(*attempt, 2);
            assert_eq!(*finish_reason, FinishReason::Stop);
            assert_eq!(usage.unwrap().completion_tokens, 4);
        }
        other => panic!("expected done, got {other:?}"),
    }
    assert_eq!(server.requests().len(), 2);
    h.wait_queue_empty().await;
    let turns = h.turns(session).await;
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].status, TurnStatus::Done);
    assert_eq!(turns[0].assistant, "The answer is 42.");
    assert_eq!(turns[0].attempt, 2);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rejected_request_fails_the_job_without_retry() {
    let h = Harness::start(1500, 3).await;
    let server = ScriptedServer::start(vec![
        // OpenAI's words for a wrong key name the key's last characters.
        Script::status(
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-proj-********************1234."}}"#,
        ),
        // Would answer a (wrong) retry.
        Script::answer(&["retried"]),
    ])
    .await;
    let worker = openai_worker(&h, &server).await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let id = h.submit(session, "Hi").await;

    let events = live.until(is_terminal_of(id)).await;
    match events.last().unwrap() {
        Event::Error { code, message, .. } => {
            assert_eq!(*code, ErrorCode::ModelFailed);
            // The user gets a plain message; the server's text is logged.
            assert!(!message.contains("sk-"), "{message}");
            assert!(!message.contains("API key"), "{message}");
            assert!(message.contains("could not answer"), "{message}");
        }
        other => panic!("expected error, got {other:?}"),
    }
    assert!(
        !events.iter().any(|e| matches!(e, Event::Restart { .. })),
        "{events:?}"
    );
    // The job is gone from the queue: nothing can deliver it again.
    h.wait_queue_empty().await;
    wait_until(|| async { h.turns(session).await.len() == 1 }).await;
    assert_eq!(h.turns(session).await[0].status, TurnStatus::Failed);
    assert!(h.record(session).await.is_finished(id));
    assert_eq!(server.requests().len(), 1);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_closes_the_model_connection_and_is_announced_once() {
    let h = Harness::start(1500, 3).await;
    let server = ScriptedServer::start(vec![Script::Endless {
        pace: Duration::from_millis(20),
    }])
    .await;
    let worker = openai_worker(&h, &server).await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let id = h.submit(session, "Tell me everything").await;

    let first = live
        .until(|e| matches!(e, Event::Chunk { message_id, .. } if *message_id == id))
        .await;
    assert!(matches!(first.last(), Some(Event::Chunk { .. })));
    h.cancel(session, id).await;
    let rest = live.until(is_terminal_of(id)).await;
    assert_eq!(rest.last().unwrap(), &Event::Cancelled { message_id: id });
    server.wait_all_closed(Duration::from_secs(2)).await;

    h.wait_queue_empty().await;
    wait_until(|| async { h.turns(session).await.len() == 1 }).await;
    let turn = &h.turns(session).await[0];
    assert_eq!(turn.status, TurnStatus::Cancelled);
    assert!(turn.assistant.starts_with("t0 "), "{:?}", turn.assistant);
    let events = h.stored_events(session).await;
    let cancelled = events
        .iter()
        .filter(|e| matches!(e, Event::Cancelled { .. }))
        .count();
    assert_eq!(cancelled, 1, "{events:?}");
    assert_eq!(server.requests().len(), 1);
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn earlier_turns_of_the_session_are_sent_as_context() {
    let h = Harness::start(1500, 3).await;
    let server = ScriptedServer::start(vec![
        Script::answer(&["Paris", "."]),
        Script::answer(&["About ", "2 million."]),
    ])
    .await;
    let worker = openai_worker(&h, &server).await;
    let session = h.new_session().await;
    let other_session = h.new_session().await;
    let mut live = h.live(session).await;

    let first = h.submit(session, "Capital of France?").await;
    live.until(is_terminal_of(first)).await;
    // The turn is stored right after `done`; the next question is asked
    // once it is, as a user would.
    wait_until(|| async { h.turns(session).await.len() == 1 }).await;
    let second = h.submit(session, "How many people live there?").await;
    let events = live.until(is_terminal_of(second)).await;
    assert_eq!(answer_of(&events, second, 1), "About 2 million.");

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].body["messages"],
        json!([{"role": "user", "content": "Capital of France?"}])
    );
    assert_eq!(
        requests[1].body["messages"],
        json!([
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "How many people live there?"},
        ])
    );

    // A regeneration of the second question: the model sees the question
    // without the answer it replaces ...
    server.push(Script::answer(&["Over ", "2 million."]));
    wait_until(|| async { h.turns(session).await.len() == 2 }).await;
    let again = h
        .submit_regeneration(session, "How many people live there?", second)
        .await;
    let events = live.until(is_terminal_of(again)).await;
    assert_eq!(answer_of(&events, again, 1), "Over 2 million.");
    assert_eq!(
        server.requests()[2].body["messages"],
        requests[1].body["messages"]
    );
    // ... and the next question sees that question once, with its latest answer.
    server.push(Script::answer(&["Yes."]));
    wait_until(|| async { h.turns(session).await.len() == 3 }).await;
    let next = h.submit(session, "Is it big?").await;
    live.until(is_terminal_of(next)).await;
    assert_eq!(
        server.requests()[3].body["messages"],
        json!([
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "How many people live there?"},
            {"role": "assistant", "content": "Over 2 million."},
            {"role": "user", "content": "Is it big?"},
        ])
    );
    // The turn is stored right after `done`: wait for it, then read.
    wait_until(|| async { h.turns(session).await.len() == 4 }).await;
    let turns = h.turns(session).await;
    assert_eq!(turns.len(), 4, "the history keeps both answers");
    assert_eq!(turns[2].replaces, Some(second));

    // Another session's conversation is not this one's context.
    server.push(Script::answer(&["Hello."]));
    let mut other_live = h.live(other_session).await;
    let third = h.submit(other_session, "Hi").await;
    other_live.until(is_terminal_of(third)).await;
    assert_eq!(
        server.requests()[4].body["messages"],
        json!([{"role": "user", "content": "Hi"}])
    );
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_model_that_thinks_past_the_first_token_timeout_answers_once_without_its_reasoning() {
    let h = Harness::start(1500, 3).await;
    // 1.5 s of reasoning with a 1 s first-token timeout, then the answer
    // with its thinking inline as well.
    let mut steps = Vec::new();
    for i in 0..6 {
        steps.push(Step::Pause(Duration::from_millis(250)));
        steps.push(Step::Send(sse::reasoning_content(&format!(
            "thought {i}. "
        ))));
    }
    steps.extend([
        Step::Send(sse::content("<think>more thinking</think>")),
        Step::Send(sse::content("The answer.")),
        Step::Send(sse::finish("stop")),
        Step::Send(sse::done()),
    ]);
    let server = ScriptedServer::start(vec![
        Script::Raw(steps),
        Script::answer(&["A retry would say this."]),
    ])
    .await;
    let worker = openai_worker_with(
        &h,
        &server,
        &[
            "--openai-first-token-timeout-secs",
            "1",
            "--openai-timeout-secs",
            "1",
        ],
    )
    .await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;
    let id = h.submit(session, "Think first").await;

    let events = live.until(is_terminal_of(id)).await;
    assert!(
        !events.iter().any(|e| matches!(e, Event::Restart { .. })),
        "{events:?}"
    );
    // Its thinking is published as `reasoning` events (the inline
    // `<think>` too), all before the answer's chunks, each sequence from 0.
    use protocol::EventKind as K;
    assert_eq!(
        kinds_of(&events, id),
        [K::UserMessage, K::Reasoning, K::Chunk, K::Done],
        "{events:?}"
    );
    let thought = "thought 0. thought 1. thought 2. thought 3. thought 4. thought 5. more thinking";
    assert_eq!(reasoning_of(&events, id, 1), thought);
    assert_eq!(answer_of(&events, id, 1), "The answer.");
    assert!(
        matches!(events.last(), Some(Event::Done { attempt: 1, .. })),
        "{events:?}"
    );
    assert_eq!(
        h.stored_events(session).await,
        events,
        "replayed as published"
    );
    assert_eq!(server.requests().len(), 1);
    wait_until(|| async { h.turns(session).await.len() == 1 }).await;
    let turn = &h.turns(session).await[0];
    assert_eq!(turn.assistant, "The answer.", "no reasoning in the answer");
    assert_eq!(turn.reasoning_chars, thought.chars().count() as u64);

    // The next question's context holds the answer, not the reasoning.
    server.push(Script::answer(&["Yes."]));
    let next = h.submit(session, "Sure?").await;
    live.until(is_terminal_of(next)).await;
    assert_eq!(
        server.requests()[1].body["messages"],
        json!([
            {"role": "user", "content": "Think first"},
            {"role": "assistant", "content": "The answer."},
            {"role": "user", "content": "Sure?"},
        ])
    );
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn bounds_a_model_server_breaks_end_the_answer_at_once() {
    let h = Harness::start(1500, 3).await;
    let big_token = "0123456789".repeat(70);
    let server = ScriptedServer::start(vec![
        // A line with no end: refused at 1 MiB, not retried.
        Script::Raw(vec![
            Step::Send(sse::content("Starting ")),
            Step::Send("data: ".into()),
            Step::Flood { bytes: 8 << 20 },
        ]),
        // Answers the next question (or a wrong retry, which the request
        // count catches).
        Script::answer(&[&big_token, &big_token, "never"]),
    ])
    .await;
    let worker = openai_worker_with(
        &h,
        &server,
        &[
            "--openai-max-answer-bytes",
            "1000",
            "--chunk-max-bytes",
            "64",
        ],
    )
    .await;
    let session = h.new_session().await;
    let mut live = h.live(session).await;

    let flooded = h.submit(session, "Flood me").await;
    let events = live.until(is_terminal_of(flooded)).await;
    match events.last().unwrap() {
        Event::Error { code, message, .. } => {
            assert_eq!(*code, ErrorCode::ModelFailed);
            assert!(message.contains("could not answer"), "{message}");
        }
        other => panic!("expected error, got {other:?}"),
    }
    assert!(
        !events.iter().any(|e| matches!(e, Event::Restart { .. })),
        "{events:?}"
    );
    assert_eq!(server.requests().len(), 1, "not retried");
    wait_until(|| async { h.turns(session).await.len() == 1 }).await;

    // Tokens of 700 bytes, over a 1000-byte answer bound, in 64-byte
    // chunks: the first token is split, the second cut, `done` says
    // `length`, and the turn keeps the answer so far.
    let long = h.submit(session, "Talk at length").await;
    let events = live.until(is_terminal_of(long)).await;
    let chunks = chunks_of(&events, long);
    assert!(chunks.iter().all(|c| c.len() <= 64), "{chunks:?}");
    let answer = answer_of(&events, long, 1);
    assert_eq!(answer, big_token.repeat(2)[..1000]);
    match events.last().unwrap() {
        Event::Done {
            finish_reason,
            usage,
            ..
        } => {
            assert_eq!(*finish_reason, FinishReason::Length);
            assert_eq!(*usage, None, "the server's count was never read");
        }
        other => panic!("expected done, got {other:?}"),
    }
    h.wait_queue_empty().await;
    wait_until(|| async { h.turns(session).await.len() == 2 }).await;
    let turn = &h.turns(session).await[1];
    assert_eq!(turn.status, TurnStatus::Done);
    assert_eq!(turn.assistant, answer);
    worker.shutdown().await.unwrap();
}
