//! A retry after the dedup window (issue 14, point 5). JetStream forgets a
//! `Nats-Msg-Id` after `--dedup-window-secs`; the session record's
//! in-flight entry lives exactly that long, and a message it no longer
//! holds as in flight (finished, or expired unfinished) is never published
//! again: a late retry neither stores the question again nor queues a
//! second generation. Run with a 1 s window.

mod support;

use std::time::Duration;

use protocol::{ErrorCode, EventKind, MessageId};
use serde_json::{json, Value};
use support::{assert_rest_error, eventually, TestApp};

const WINDOW: &[&str] = &["--dedup-window-secs", "1"];

/// Lets the 1 s dedup window (and with it the in-flight entry) run out:
/// the condition these tests need is the passing of time itself.
async fn outlive_the_window() {
    tokio::time::sleep(Duration::from_millis(2_100)).await;
}

#[tokio::test]
async fn a_late_retry_of_a_message_still_queued_is_refused_not_queued_again() {
    let app = TestApp::builder().layout_args(WINDOW).start().await; // no worker
    let (session, token) = app.new_session().await;
    let id = MessageId::new();
    let path = format!("/api/chat?session={session}");
    let body = json!({"message_id": id, "content": "still queued"});
    assert_eq!(app.post(&path, &token, body.clone()).await.status(), 202);
    outlive_the_window().await;

    let late = app.post(&path, &token, body).await;
    assert_rest_error(late, 400, ErrorCode::BadRequest).await;
    assert_eq!(app.queued_jobs().await, 1, "no second generation queued");
    let (events, _) = app.events(session, &token, 0).await;
    assert_eq!(events.len(), 1, "the question stored once: {events:?}");
}

#[tokio::test]
async fn a_late_retry_of_an_answered_message_gets_its_seq_and_stores_nothing() {
    let app = TestApp::builder()
        .layout_args(WINDOW)
        .real_worker()
        .start()
        .await;
    let (session, token) = app.new_session().await;
    let id = MessageId::new();
    let path = format!("/api/chat?session={session}");
    let body = json!({"message_id": id, "content": "answered once"});
    let first: Value = app
        .post(&path, &token, body.clone())
        .await
        .json()
        .await
        .unwrap();
    eventually("the answer's turn", || async {
        app.history(session, &token).await.len() == 1
    })
    .await;
    let (before, _) = app.events(session, &token, 0).await;
    outlive_the_window().await;

    let late = app.post(&path, &token, body).await;
    assert_eq!(late.status(), 202);
    let late: Value = late.json().await.unwrap();
    assert_eq!(late["seq"], first["seq"], "the question's first seq");
    assert_eq!(app.queued_jobs().await, 0, "nothing queued again");
    let (after, _) = app.events(session, &token, 0).await;
    assert_eq!(after, before, "nothing stored again");
    let echoes = after
        .iter()
        .filter(|e| e.event.kind() == EventKind::UserMessage)
        .count();
    assert_eq!(echoes, 1);
}
