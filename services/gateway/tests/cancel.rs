//! Cancel: the gateway sets the flag and tells the workers at once, from
//! any gateway; a running answer stops promptly and exactly once.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use protocol::{subjects, CancelNotice, ErrorCode, EventKind, MessageId};
use serde_json::json;
use support::{assert_rest_error, count, eventually, TestApp, WAIT};

/// A real worker slow enough (20 tokens/s, 400 tokens) to be cancelled mid-answer.
const SLOW_ANSWER: [&str; 4] = ["--demo-tokens-per-sec", "20", "--demo-answer-tokens", "400"];

/// The longest a cancel may take to stop a running answer.
const PROMPT: Duration = Duration::from_millis(200);

#[tokio::test]
async fn cancel_sets_the_flag_and_notifies_workers_and_unknown_is_not_found() {
    let app = TestApp::start().await; // no worker: the message stays active
    let (session, token) = app.new_session().await;
    let client = app.nats.connect().await.unwrap();
    let mut notices = client.subscribe(subjects::cancel(session)).await.unwrap();
    client.flush().await.unwrap();
    let kv = app.js().await;
    let kv = kv.get_key_value(subjects::SESSIONS_BUCKET).await.unwrap();
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;
    let path = format!("/api/cancel?session={session}");
    let unknown = MessageId::new();

    for over_rest in [false, true] {
        let (id, _) = ws.chat("stop me").await;
        if over_rest {
            let response = app.post(&path, &token, json!({"message_id": id})).await;
            assert_eq!(response.status(), 202);
            assert_eq!(
                response.json::<serde_json::Value>().await.unwrap(),
                json!({})
            );
        } else {
            ws.cancel(id).await;
        }
        let notice = tokio::time::timeout(WAIT, notices.next()).await.unwrap();
        let notice: CancelNotice = serde_json::from_slice(&notice.unwrap().payload).unwrap();
        assert_eq!(notice.message_id, id);
        let flag = kv
            .get(subjects::cancel_flag_key(session, id))
            .await
            .unwrap();
        assert!(flag.is_some(), "the cancel flag of {id} is set");
    }
    ws.cancel(unknown).await;
    ws.expect_error(ErrorCode::NotFound).await;
    let response = app
        .post(&path, &token, json!({"message_id": unknown}))
        .await;
    assert_rest_error(response, 404, ErrorCode::NotFound).await;
}

#[tokio::test]
async fn cancel_stops_a_running_answer_within_200ms_exactly_once() {
    let app = TestApp::builder()
        .real_worker_with(&SLOW_ANSWER)
        .start()
        .await;
    let (session, token, mut ws) = app.attach().await;
    let (id, _) = ws.chat("a slow answer").await;
    ws.until_kind(EventKind::Chunk).await;
    let sent = Instant::now();
    ws.cancel(id).await;
    let events = ws.until_terminal(id).await;
    assert!(
        sent.elapsed() < PROMPT,
        "cancelled after {:?}",
        sent.elapsed()
    );
    assert_eq!(events.last().unwrap().event.kind(), EventKind::Cancelled);
    // A second cancel of the finished message is a no-op, not an error.
    ws.cancel(id).await;
    ws.ping().await;
    let (stored, _) = app.events(session, &token, 0).await;
    assert_eq!(count(&stored, EventKind::Cancelled), 1);
    assert_eq!(count(&stored, EventKind::Done), 0);
}

#[tokio::test]
async fn a_cancel_sent_to_another_gateway_still_stops_the_answer() {
    let app = TestApp::builder()
        .real_worker_with(&SLOW_ANSWER)
        .start()
        .await;
    // A second gateway on the same NATS: the cancel goes there.
    let other = app.another_gateway("gw-other").await;
    let (session, token, mut ws) = app.attach().await;
    let (id, _) = ws.chat("cancel me from elsewhere").await;
    ws.until_kind(EventKind::Chunk).await;
    let sent = Instant::now();
    let response = app
        .http
        .post(format!(
            "http://{}/api/cancel?session={session}",
            other.addr()
        ))
        .bearer_auth(&token)
        .json(&json!({"message_id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let events = ws.until_terminal(id).await;
    assert!(
        sent.elapsed() < PROMPT,
        "cancelled after {:?}",
        sent.elapsed()
    );
    let last = events.last().unwrap().event.kind();
    assert_eq!(last, EventKind::Cancelled, "the answer ended otherwise");
    other.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_message_id_another_session_chose_is_its_own_message() {
    let app = TestApp::builder()
        .real_worker_with(&SLOW_ANSWER)
        .start()
        .await;
    let (_, _, mut victim) = app.attach().await;
    let (id, victim_seq) = victim.chat("my private answer").await;
    victim.until_kind(EventKind::Chunk).await;

    // Another session sends a question with the same (client-chosen) id.
    let (intruder, token) = app.new_session().await;
    let chat = format!("/api/chat?session={intruder}");
    let response = app
        .post(&chat, &token, json!({"message_id": id, "content": "mine"}))
        .await;
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    let intruder_seq = accepted["seq"].as_u64().unwrap();
    assert_ne!(intruder_seq, victim_seq, "a new message, not the victim's");
    let (stored, _) = app.events(intruder, &token, 0).await;
    assert_eq!(stored[0].seq, intruder_seq, "its echo is in its own stream");

    // Its cancel of that id stops its own answer only.
    let cancel = format!("/api/cancel?session={intruder}");
    let response = app.post(&cancel, &token, json!({"message_id": id})).await;
    assert_eq!(response.status(), 202);
    eventually("the intruder's own answer is cancelled", || async {
        let (stored, _) = app.events(intruder, &token, 0).await;
        count(&stored, EventKind::Cancelled) == 1
    })
    .await;
    // The victim's answer goes on: more chunks, no terminal event.
    let mut more = 0;
    while more < 5 {
        let event = victim.event().await;
        assert_eq!(event.event.kind(), EventKind::Chunk, "{event:?}");
        more += 1;
    }
}
