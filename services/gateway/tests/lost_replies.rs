//! A NATS request whose connection is lost before its reply arrives (a
//! nats-server restart, a cluster node lost) is asked again on the new
//! connection instead of waiting out its 5 s time-out, which is longer than
//! a client waits for `ready` (issue 14, point 4). Asked again, a request
//! must not act twice: the lost tries here were carried out by the server
//! (their reply is what is lost), forced by a test hook
//! (`--test-lose-nats-replies n`: the first n such requests), whatever the
//! timing.

mod support;

use protocol::{EventKind, MessageId};
use serde_json::{json, Value};
use support::{count, Script, TestApp};

#[tokio::test]
async fn a_socket_whose_token_check_loses_its_connection_is_attached_on_the_next() {
    let app = TestApp::builder()
        .gateway_args(&["--test-lose-nats-replies", "1"])
        .scripted_worker(Script::words(&["still ", "here"]))
        .start()
        .await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;
    let id = ws.answered("are you there?").await;
    let events = app.all_events(session, &token).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.message_id() == Some(id) && e.event.is_terminal())
            .count(),
        1,
        "{events:?}"
    );
}

#[tokio::test]
async fn a_chat_whose_every_step_loses_its_reply_is_stored_and_queued_once() {
    // The token check, the admission (compare-and-set on the session
    // record), the question's echo and the job: each done, its reply lost.
    let app = TestApp::builder()
        .gateway_args(&["--test-lose-nats-replies", "4"])
        .start()
        .await; // no worker yet: the queue shows what was queued
    let (session, token) = app.new_session().await;
    let id = MessageId::new();
    let response = app
        .post(
            &format!("/api/chat?session={session}"),
            &token,
            json!({"message_id": id, "content": "asked once"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(app.queued_jobs().await, 1, "asked twice, queued once");
    let events = app.all_events(session, &token).await;
    assert_eq!(count(&events, EventKind::UserMessage), 1, "{events:?}");
    assert_eq!(events[0].seq, accepted["seq"].as_u64().unwrap());

    // The session record counts the message in flight once: it is answered
    // and the session takes the next question.
    let _worker = app
        .scripted_worker(Script::words(&["one ", "answer"]))
        .await;
    let mut ws = app.connect(session, &token, Some(0)).await;
    ws.ready().await;
    let answer = ws.until_terminal(id).await;
    assert_eq!(answer.last().map(|e| e.event.kind()), Some(EventKind::Done));
    ws.answered("and the next").await;
}
