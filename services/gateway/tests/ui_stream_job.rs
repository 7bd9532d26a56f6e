//! An SSE answer's response begins once its question is stored, before its
//! job is queued: a worker may take the job before JetStream's ack comes
//! back, and the answer's first chunks must not wait for that ack. What
//! `POST /api/chat` answers about the job (a full work-queue, an outcome
//! that stays unknown) therefore arrives in the stream, as an `error` chunk.

mod support;

use protocol::{ErrorCode, Event, EventKind, MessageId};
use serde_json::{json, Value};
use support::sse::{chat_body, read_chunks, text_of};
use support::{eventually, Script, TestApp};

/// The chunks of an answer that ended before anything of it was shown.
fn ended_at_once(id: MessageId, error_text: &str) -> Vec<Value> {
    vec![
        json!({"type": "start", "messageId": id.to_string()}),
        json!({"type": "start-step"}),
        json!({"type": "error", "errorText": error_text}),
    ]
}

#[tokio::test]
async fn a_full_work_queue_ends_the_answer_s_stream_with_overloaded() {
    let app = TestApp::builder()
        .gateway_args(&["--max-in-flight-per-session", "10"])
        .layout_args(&["--queue-max-msgs", "1"])
        .start()
        .await; // no worker: the first job stays queued
    let (session, token) = app.new_session().await;
    let first = app
        .post("/api/ui/chat", &token, chat_body(session, "queued"))
        .await;
    assert_eq!(first.status(), 200);
    eventually("the first job to be queued", || async {
        app.queued_jobs().await == 1
    })
    .await;

    let refused = app
        .post("/api/ui/chat", &token, chat_body(session, "refused"))
        .await;
    assert_eq!(
        refused.status(),
        200,
        "the response begins before the job is queued"
    );
    let id: MessageId = refused.headers()["x-resumable-stream-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let chunks = read_chunks(refused, None).await;
    assert_eq!(
        chunks,
        ended_at_once(id, "the service is at capacity; try again shortly")
    );
    // The refusal is stored after the question, as for every transport.
    let (events, _) = app.events(session, &token, 0).await;
    let refusal = events
        .iter()
        .filter(|e| e.event.message_id() == Some(id))
        .map(|e| &e.event)
        .collect::<Vec<_>>();
    assert_eq!(refusal.len(), 2, "{events:?}");
    assert_eq!(refusal[0].kind(), EventKind::UserMessage);
    assert!(
        matches!(
            refusal[1],
            Event::Error {
                code: ErrorCode::Overloaded,
                ..
            }
        ),
        "{refusal:?}"
    );
    assert_eq!(app.queued_jobs().await, 1, "the first job is still queued");
    drop(first);
}

#[tokio::test]
async fn a_job_whose_outcome_stays_unknown_ends_the_stream_and_is_still_answered() {
    // Every job ack is lost (the job is stored on the first try): the POST's
    // tries end without knowing, which `POST /api/chat` answers with 503.
    let app = TestApp::builder()
        .gateway_args(&["--test-lose-job-acks", "1000"])
        .start()
        .await;
    let (session, token) = app.new_session().await;
    let posted = app
        .post("/api/ui/chat", &token, chat_body(session, "never acked"))
        .await;
    assert_eq!(posted.status(), 200);
    let id: MessageId = posted.headers()["x-resumable-stream-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let chunks = read_chunks(posted, None).await;
    assert_eq!(chunks, ended_at_once(id, "the answer failed"));
    let (events, _) = app.events(session, &token, 0).await;
    assert_eq!(events.len(), 1, "the echo only, no refusal: {events:?}");
    assert_eq!(app.queued_jobs().await, 1, "every try deduplicated");

    // The job was queued all along: a worker answers it, once, and the
    // answer is stored whole for a reload to show.
    let _worker = app
        .scripted_worker(Script::words(&["still ", "answered"]))
        .await;
    eventually("the answer's end to be stored", || async {
        let (events, _) = app.events(session, &token, 0).await;
        events
            .iter()
            .any(|e| e.event.message_id() == Some(id) && e.event.is_terminal())
    })
    .await;
    let (events, _) = app.events(session, &token, 0).await;
    let terminal = events
        .iter()
        .filter(|e| e.event.message_id() == Some(id) && e.event.is_terminal())
        .map(|e| e.event.kind())
        .collect::<Vec<_>>();
    assert_eq!(terminal, [EventKind::Done], "{events:?}");
    let text: String = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Chunk {
                message_id, text, ..
            } if *message_id == id => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "still answered");
    assert_eq!(text_of(&chunks), "", "the ended stream showed none of it");
}
