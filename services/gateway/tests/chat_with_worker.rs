//! The chat path on one gateway with a real worker and a real nats-server.

#![allow(clippy::unwrap_used)]

#[path = "worker_support/mod.rs"]
mod support;

use protocol::frames::{ControlFrame, ServerFrame};
use protocol::Event;
use serde_json::json;
use support::{answer, assert_strictly_increasing, Options, TestApp, ANSWER_TOKENS};

#[tokio::test]
async fn a_websocket_chat_streams_the_demo_answer_in_order() {
    let app = TestApp::start().await;
    let mut ws = support::Client::connect(&app.ws_url("")).await;
    let (session, token) = match ws.ready().await {
        ControlFrame::Ready {
            session_id,
            token,
            node,
            last_seq,
        } => {
            assert_eq!(node, "gw-test");
            assert_eq!(last_seq, 0);
            (
                session_id,
                token.expect("a new session's token is in ready"),
            )
        }
        _ => unreachable!(),
    };
    let prompt = "How do tides work?";
    let (id, seq) = ws.chat(prompt).await;
    let events = ws.until_terminal(id).await;
    assert_eq!(events[0].seq, seq);
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
    assert!(!indexes.is_empty());
    assert_eq!(indexes, (0..indexes.len() as u32).collect::<Vec<_>>());
    assert!(matches!(events.last().unwrap().event, Event::Done { .. }));
    assert_eq!(
        answer(&events, id),
        worker::backends::demo::answer(prompt, ANSWER_TOKENS)
    );

    // The same events, from the stream, through REST.
    let stored = app.events(&session.to_string(), &token, 0).await;
    assert_eq!(stored, events);
}

#[tokio::test]
async fn a_question_sent_the_moment_done_arrives_is_never_refused() {
    // One message in flight per session: the worker frees the slot before it
    // stores `done`, so the next question, sent on `done`, always fits.
    let app = TestApp::start_with(Options {
        gateway_args: vec!["--max-in-flight-per-session".into(), "1".into()],
        ..Default::default()
    })
    .await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    for turn in 0..15 {
        // `chat` panics on an error frame such as `rate_limited`.
        let (id, _) = ws.chat(&format!("turn {turn}")).await;
        let events = ws.until_terminal(id).await;
        assert!(matches!(
            events.last().map(|e| &e.event),
            Some(Event::Done { .. })
        ));
    }
}

#[tokio::test]
async fn two_sockets_on_one_session_both_get_every_event() {
    let app = TestApp::start().await;
    let (session, token) = app.new_session().await;
    let mut a = app.connect(&session, &token, None).await;
    let mut b = app.connect(&session, &token, None).await;
    a.ready().await;
    b.ready().await;
    let (id, _) = a.chat("two tabs").await;
    let on_a = a.until_terminal(id).await;
    let on_b = b.until_terminal(id).await;
    assert_eq!(on_a, on_b);
    assert!(on_b
        .iter()
        .any(|e| matches!(e.event, Event::UserMessage { .. })));
}

#[tokio::test]
async fn a_retried_post_with_the_same_message_id_is_answered_once() {
    let app = TestApp::start().await;
    let (session, token) = app.new_session().await;
    let id = protocol::MessageId::new();
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
        answers.push(response.json::<serde_json::Value>().await.unwrap());
    }
    assert_eq!(answers[0], answers[1]);
    let mut ws = app.connect(&session, &token, Some(0)).await;
    ws.ready().await;
    let events = ws.until_terminal(id).await;
    let echoes = events
        .iter()
        .filter(|e| matches!(e.event, Event::UserMessage { .. }))
        .count();
    assert_eq!(echoes, 1);
    let settle = tokio::time::timeout(std::time::Duration::from_millis(500), ws.frame()).await;
    assert!(
        settle.is_err(),
        "nothing more after the one answer: {settle:?}"
    );
    let stored = app.events(&session, &token, 0).await;
    assert_eq!(
        stored
            .iter()
            .filter(|e| matches!(e.event, Event::Done { .. }))
            .count(),
        1
    );
}

#[tokio::test]
async fn history_and_events_endpoints_return_what_the_stream_holds() {
    let app = TestApp::start().await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    let mut all = Vec::new();
    for prompt in ["first question", "second question"] {
        let (id, _) = ws.chat(prompt).await;
        all.extend(ws.until_terminal(id).await);
    }
    // History is written after `done`; wait for both turns.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let body: serde_json::Value = app
            .http
            .get(format!("{}/api/history?session={session}", app.base()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["turns"].as_array().unwrap().len() == 2 || tokio::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let turns = body["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2, "{body}");
    assert_eq!(turns[0]["user"], "first question");
    assert_eq!(turns[1]["user"], "second question");
    assert_eq!(
        turns[1]["assistant"].as_str().unwrap(),
        worker::backends::demo::answer("second question", ANSWER_TOKENS)
    );
    assert_eq!(turns[0]["status"], "done");
    assert_eq!(body["last_seq"].as_u64().unwrap(), all.last().unwrap().seq);

    let middle = all[all.len() / 2].seq;
    let after: Vec<_> = app.events(&session, &token, middle).await;
    let expected: Vec<_> = all.iter().filter(|e| e.seq > middle).cloned().collect();
    assert_eq!(after, expected);
}

#[tokio::test]
async fn wrong_or_missing_tokens_are_refused_and_see_nothing() {
    let app = TestApp::start().await;
    let (session, token) = app.new_session().await;
    let (_, other_token) = app.new_session().await;
    for auth in [None, Some("nope"), Some(other_token.as_str())] {
        let mut request = app
            .http
            .get(format!("{}/api/history?session={session}", app.base()));
        if let Some(auth) = auth {
            request = request.bearer_auth(auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let mut intruder =
        support::Client::connect(&app.ws_url(&format!("?session={session}&token={other_token}")))
            .await;
    match intruder.recv().await {
        support::Received::Frame(ServerFrame::Control(ControlFrame::Error { code, .. })) => {
            assert_eq!(code, protocol::ErrorCode::Unauthorized)
        }
        other => panic!("expected an unauthorized error, got {other:?}"),
    }
    assert!(matches!(
        intruder.recv().await,
        support::Received::Closed(Some(1008))
    ));

    // The owner chats; the intruder's closed socket got nothing of it.
    let mut owner = app.connect(&session, &token, None).await;
    owner.ready().await;
    let (id, _) = owner.chat("private").await;
    owner.until_terminal(id).await;
    let unknown = support::Client::connect(
        &app.ws_url(&format!("?session={}&token=x", protocol::SessionId::new())),
    )
    .await;
    let mut unknown = unknown;
    assert!(matches!(
        unknown.recv().await,
        support::Received::Frame(ServerFrame::Control(ControlFrame::Error {
            code: protocol::ErrorCode::NotFound,
            ..
        }))
    ));
    assert!(matches!(
        unknown.recv().await,
        support::Received::Closed(Some(1008))
    ));
}
