//! The chat path: a question over WebSocket or REST becomes one queued job
//! and one answer, streamed in order to every socket of the session and
//! kept for `/api/events` and `/api/history`.

mod support;

use protocol::records::{Turn, TurnStatus};
use protocol::{Event, EventKind, MessageId};
use serde_json::{json, Value};
use support::{answer, assert_strictly_increasing, count, eventually, Script, TestApp, Ws};

#[tokio::test]
async fn a_websocket_chat_streams_the_whole_answer_in_order() {
    let app = TestApp::builder().real_worker().start().await;
    let mut ws = Ws::connect(&app.ws_url("")).await;
    let ready = ws.ready().await;
    let token = ready
        .token
        .expect("a new session's ready carries its token");
    assert_eq!(token.len(), 64);
    assert_eq!(ready.node, "gw-test");
    assert_eq!(ready.last_seq, 0);

    let prompt = "How do tides work?";
    let (id, seq) = ws.chat(prompt).await;
    let events = ws.until_terminal(id).await;
    assert_eq!(events[0].seq, seq, "accepted carries the echo's seq");
    let echo = Event::UserMessage {
        message_id: id,
        content: prompt.into(),
        replaces: None,
    };
    assert_eq!(events[0].event, echo);
    assert_strictly_increasing(&events);
    let indexes: Vec<u32> = events
        .iter()
        .filter_map(|e| match e.event {
            Event::Chunk { index, .. } => Some(index),
            _ => None,
        })
        .collect();
    assert!(!indexes.is_empty());
    assert_eq!(indexes, (0..indexes.len() as u32).collect::<Vec<_>>());
    assert_eq!(events.last().unwrap().event.kind(), EventKind::Done);
    let expected = worker::backends::demo::answer(prompt, support::ANSWER_TOKENS);
    assert_eq!(answer(&events, id), expected);

    // The same events, from the stream, through REST.
    let (stored, last) = app.events(ready.session, &token, 0).await;
    assert_eq!(stored, events);
    assert_eq!(last, events.last().unwrap().seq);
    // A reconnect without after_seq announces where the session stands.
    let again = app.connect(ready.session, &token, None).await.ready().await;
    assert_eq!(again.token, None, "the token is shown only once");
    assert_eq!(again.last_seq, last);
}

#[tokio::test]
async fn two_sockets_on_one_session_both_get_every_event() {
    let script = Script::words(&["one ", "two ", "three"]);
    let app = TestApp::builder().scripted_worker(script).start().await;
    let (session, token) = app.new_session().await;
    let mut a = app.connect(session, &token, None).await;
    let mut b = app.connect(session, &token, None).await;
    a.ready().await;
    b.ready().await;
    let (id, _) = a.chat("two tabs").await;
    let on_a = a.until_terminal(id).await;
    let on_b = b.until_terminal(id).await;
    assert_eq!(on_a, on_b);
    assert_eq!(on_b[0].event.kind(), EventKind::UserMessage);
    assert_eq!(on_b.len(), 5);
}

#[tokio::test]
async fn a_retried_post_with_the_same_message_id_is_queued_once() {
    let app = TestApp::start().await; // no worker: the job stays queued
    let (session, token) = app.new_session().await;
    let id = MessageId::new();
    let path = format!("/api/chat?session={session}");
    let mut answers = Vec::new();
    for _ in 0..2 {
        let body = json!({"message_id": id, "content": "once only"});
        let response = app.post(&path, &token, body).await;
        assert_eq!(response.status(), 202);
        answers.push(response.json::<Value>().await.unwrap());
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0]["message_id"], json!(id));
    assert_eq!(app.queued_jobs().await, 1, "one job in the queue");
    let (events, _) = app.events(session, &token, 0).await;
    assert_eq!(events.len(), 1, "one user_message event: {events:?}");
    assert_eq!(events[0].seq, answers[0]["seq"].as_u64().unwrap());
}

#[tokio::test]
async fn history_returns_the_turns_and_events_returns_what_follows_after_seq() {
    let app = TestApp::builder().real_worker().start().await;
    let (session, token, mut ws) = app.attach().await;
    let mut all = Vec::new();
    for prompt in ["first question", "second question"] {
        let (id, _) = ws.chat(prompt).await;
        all.extend(ws.until_terminal(id).await);
    }
    // The worker records a turn after `done`.
    let path = format!("/api/history?session={session}");
    let history = || async {
        let body: Value = app.get(&path, &token).await.json().await.unwrap();
        body
    };
    eventually("both turns in the history", || async {
        history().await["turns"].as_array().unwrap().len() == 2
    })
    .await;
    let body = history().await;
    let turns: Vec<Turn> = serde_json::from_value(body["turns"].clone()).unwrap();
    let users: Vec<&str> = turns.iter().map(|t| t.user.as_str()).collect();
    assert_eq!(users, ["first question", "second question"]);
    assert!(turns.iter().all(|t| t.status == TurnStatus::Done));
    let expected = worker::backends::demo::answer("second question", support::ANSWER_TOKENS);
    assert_eq!(turns[1].assistant, expected);

    let (stored, last) = app.events(session, &token, 0).await;
    assert_eq!(stored, all);
    assert_eq!(body["last_seq"].as_u64().unwrap(), last);
    let middle = all[all.len() / 2].seq;
    let (after, last_after) = app.events(session, &token, middle).await;
    let expected: Vec<_> = all.iter().filter(|e| e.seq > middle).cloned().collect();
    assert_eq!(after, expected);
    assert_eq!(last_after, last);
    let (none, _) = app.events(session, &token, last).await;
    assert!(none.is_empty());
}

#[tokio::test]
async fn a_question_sent_the_moment_done_arrives_is_never_refused() {
    // One message in flight per session: the worker frees the slot before it
    // stores `done`, so the next question, sent on `done`, always fits.
    let app = TestApp::builder()
        .gateway_args(&["--max-in-flight-per-session", "1"])
        .real_worker()
        .start()
        .await;
    let (_, _, mut ws) = app.attach().await;
    for turn in 0..15 {
        // `chat` panics on an error frame such as `rate_limited`.
        let (id, _) = ws.chat(&format!("turn {turn}")).await;
        let events = ws.until_terminal(id).await;
        assert_eq!(count(&events, EventKind::Done), 1);
    }
}
