//! The chat path on one gateway: WebSocket and REST, sessions and tokens,
//! idempotent submit, history and events, cancel. A scripted worker plays
//! the worker through real JetStream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures::StreamExt;
use protocol::frames::{ControlFrame, ServerFrame};
use protocol::records::{Turn, TurnStatus};
use protocol::{subjects, CancelNotice, ErrorCode, Event, MessageId, SessionId};
use serde_json::{json, Value};
use support::{answer, assert_strictly_increasing, Received, Script, ScriptedWorker, TestApp, Ws};

#[tokio::test]
async fn a_websocket_chat_streams_the_answer_in_order() {
    let app = TestApp::start().await;
    let script = Script::words(&["Tides ", "follow ", "the ", "moon", "."]);
    let _worker = ScriptedWorker::start(&app, script.clone()).await;
    let mut ws = Ws::connect(&app.ws_url("")).await;
    let (session, token, node, last_seq) = ws.ready().await;
    let token = token.expect("a new session's ready carries its token");
    assert_eq!(token.len(), 64);
    assert_eq!(node, "gw-test");
    assert_eq!(last_seq, 0);

    let prompt = "How do tides work?";
    let (id, seq, early) = ws.chat(prompt).await;
    let events = ws.until_terminal(id, early).await;
    assert_eq!(events[0].seq, seq, "accepted carries the echo's seq");
    assert_eq!(
        events[0].event,
        Event::UserMessage {
            message_id: id,
            content: prompt.into()
        }
    );
    assert_strictly_increasing(&events);
    let indexes: Vec<u32> = events
        .iter()
        .filter_map(|e| match e.event {
            Event::Chunk { index, .. } => Some(index),
            _ => None,
        })
        .collect();
    assert_eq!(indexes, (0..script.chunks.len() as u32).collect::<Vec<_>>());
    assert!(matches!(events.last().unwrap().event, Event::Done { .. }));
    assert_eq!(answer(&events, id), script.text());

    // The same events, from the stream, through REST.
    let (stored, last) = app.events(session, &token, 0).await;
    assert_eq!(stored, events);
    assert_eq!(last, events.last().unwrap().seq);
    // A reconnect without after_seq announces where the session stands.
    let mut again = app.connect(session, &token, None).await;
    let (_, token_again, _, last_again) = again.ready().await;
    assert_eq!(token_again, None, "the token is shown only once");
    assert_eq!(last_again, last);
}

#[tokio::test]
async fn two_sockets_on_one_session_both_get_every_event() {
    let app = TestApp::start().await;
    let _worker = ScriptedWorker::start(&app, Script::words(&["one ", "two ", "three"])).await;
    let (session, token) = app.new_session().await;
    let mut a = app.connect(session, &token, None).await;
    let mut b = app.connect(session, &token, None).await;
    a.ready().await;
    b.ready().await;
    let (id, _, early) = a.chat("two tabs").await;
    let on_a = a.until_terminal(id, early).await;
    let on_b = b.until_terminal(id, Vec::new()).await;
    assert_eq!(on_a, on_b);
    assert!(matches!(on_b[0].event, Event::UserMessage { .. }));
    assert_eq!(on_b.len(), 5);
}

#[tokio::test]
async fn a_retried_post_with_the_same_message_id_is_queued_once() {
    let app = TestApp::start().await;
    let (session, token) = app.new_session().await;
    let id = MessageId::new();
    let url = format!("{}/api/chat?session={session}", app.base());
    let mut answers = Vec::new();
    for _ in 0..2 {
        let response = app
            .http
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({"message_id": id, "content": "once only"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        answers.push(response.json::<Value>().await.unwrap());
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0]["message_id"], json!(id));
    assert!(answers[0]["seq"].as_u64().unwrap() > 0);
    assert_eq!(app.queued_jobs().await, 1, "one job in the queue");
    let (events, _) = app.events(session, &token, 0).await;
    assert_eq!(events.len(), 1, "one user_message event: {events:?}");
    assert_eq!(events[0].seq, answers[0]["seq"].as_u64().unwrap());
}

#[tokio::test]
async fn history_returns_the_turns_and_events_returns_what_follows_after_seq() {
    let app = TestApp::start().await;
    let _worker = ScriptedWorker::start(&app, Script::words(&["a", "b", "c"])).await;
    let (session, token) = app.new_session().await;
    let js = app.js().await;
    let mut turns = Vec::new();
    for (user, assistant) in [("first?", "one"), ("second?", "two")] {
        let turn = Turn {
            message_id: MessageId::new(),
            user: user.into(),
            assistant: assistant.into(),
            status: TurnStatus::Done,
            created_at: protocol::now_ms(),
            finished_at: protocol::now_ms(),
            attempt: 1,
            finish_reason: None,
            usage: None,
            user_seq: 0,
        };
        js.publish(
            subjects::history(session),
            serde_json::to_vec(&turn).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        turns.push(turn);
    }
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;
    for prompt in ["x", "y"] {
        let (id, _, early) = ws.chat(prompt).await;
        ws.until_terminal(id, early).await;
    }
    let history: Value = app
        .http
        .get(format!("{}/api/history?session={session}", app.base()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<Turn> = serde_json::from_value(history["turns"].clone()).unwrap();
    assert_eq!(got, turns);

    let (all, last) = app.events(session, &token, 0).await;
    assert_eq!(all.len(), 10, "2 × (echo + 3 chunks + done)");
    assert_eq!(history["last_seq"].as_u64().unwrap(), last);
    let n = all[3].seq;
    let (after, last_after) = app.events(session, &token, n).await;
    assert_eq!(after, all[4..].to_vec());
    assert_eq!(last_after, last);
    let (none, _) = app.events(session, &token, last).await;
    assert!(none.is_empty());
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_and_never_sees_events() {
    let app = TestApp::start().await;
    let _worker = ScriptedWorker::start(&app, Script::words(&["private ", "answer"])).await;
    let (session, token) = app.new_session().await;
    let wrong = "0".repeat(64);
    let base = app.base();
    // REST: wrong and missing tokens, unknown session, bad UUID.
    for (method, path) in [
        ("POST", "/api/chat"),
        ("POST", "/api/cancel"),
        ("GET", "/api/history"),
        ("GET", "/api/events"),
    ] {
        let url = format!("{base}{path}?session={session}");
        let body = json!({"content": "hi", "message_id": MessageId::new()});
        let request = |token: Option<&str>| {
            let builder = if method == "POST" {
                app.http.post(&url).json(&body)
            } else {
                app.http.get(&url)
            };
            match token {
                Some(t) => builder.bearer_auth(t),
                None => builder,
            }
        };
        for token in [Some(wrong.as_str()), None] {
            let response = request(token).send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {token:?}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
        }
        let unknown = format!("{base}{path}?session={}", SessionId::new());
        let status = app
            .http
            .get(&unknown)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status();
        // GET on a POST route is 405; check the GETs only.
        if method == "GET" {
            assert_eq!(status, 404, "{path} unknown session");
            let bad = app
                .http
                .get(format!("{base}{path}?session=not-a-uuid"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(bad.status(), 400);
            let body: Value = bad.json().await.unwrap();
            assert_eq!(body["error"]["code"], "bad_request");
        }
    }

    // WebSocket: the owner streams while intruders knock.
    let mut owner = app.connect(session, &token, None).await;
    owner.ready().await;
    let mut intruders = Vec::new();
    for query in [
        format!("?session={session}&token={wrong}"),
        format!("?session={session}"),
        format!("?session={session}&token="),
        format!("?session={}&token={token}", SessionId::new()),
        format!("?session=nope&token={token}"),
    ] {
        intruders.push((query.clone(), Ws::connect(&app.ws_url(&query)).await));
    }
    let (id, _, early) = owner.chat("a secret question").await;
    owner.until_terminal(id, early).await;
    for (query, mut ws) in intruders {
        let mut saw_error = false;
        loop {
            match ws.recv().await {
                Received::Frame(ServerFrame::Control(ControlFrame::Error { code, .. })) => {
                    assert!(
                        matches!(
                            code,
                            ErrorCode::Unauthorized | ErrorCode::NotFound | ErrorCode::BadRequest
                        ),
                        "{query}: {code:?}"
                    );
                    saw_error = true;
                }
                Received::Frame(other) => panic!("{query}: an intruder got {other:?}"),
                Received::Closed(code) => {
                    assert_eq!(code, Some(1008), "{query}");
                    break;
                }
            }
        }
        assert!(saw_error, "{query}: an error frame before the close");
    }
}

#[tokio::test]
async fn cancel_sets_the_flag_and_notifies_workers_and_unknown_is_not_found() {
    let app = TestApp::start().await; // no worker: the message stays active
    let (session, token) = app.new_session().await;
    let client = app.nats.connect().await.unwrap();
    let mut notices = client.subscribe(subjects::cancel(session)).await.unwrap();
    client.flush().await.unwrap();
    let js = app.js().await;
    let kv = js.get_key_value(subjects::SESSIONS_BUCKET).await.unwrap();

    // Over the socket.
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;
    let (id, _, _) = ws.chat("stop me").await;
    ws.send_json(json!({"type": "cancel", "message_id": id}))
        .await;
    let notice = tokio::time::timeout(support::WAIT, notices.next())
        .await
        .unwrap()
        .unwrap();
    let notice: CancelNotice = serde_json::from_slice(&notice.payload).unwrap();
    assert_eq!(notice.message_id, id);
    assert!(kv
        .get(subjects::cancel_flag_key(id))
        .await
        .unwrap()
        .is_some());
    let unknown = MessageId::new();
    ws.send_json(json!({"type": "cancel", "message_id": unknown}))
        .await;
    ws.expect_error(ErrorCode::NotFound).await;

    // Over REST.
    let url = format!("{}/api/cancel?session={session}", app.base());
    let (id2, _, _) = ws.chat("stop me too").await;
    let response = app
        .http
        .post(&url)
        .bearer_auth(&token)
        .json(&json!({"message_id": id2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({}));
    let notice = tokio::time::timeout(support::WAIT, notices.next())
        .await
        .unwrap()
        .unwrap();
    let notice: CancelNotice = serde_json::from_slice(&notice.payload).unwrap();
    assert_eq!(notice.message_id, id2);
    assert!(kv
        .get(subjects::cancel_flag_key(id2))
        .await
        .unwrap()
        .is_some());
    let response = app
        .http
        .post(&url)
        .bearer_auth(&token)
        .json(&json!({"message_id": unknown}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}
