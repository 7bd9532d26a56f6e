//! Guarantees 3, 4 and 6: cancel is prompt and exactly once, overload is
//! refused not absorbed, and bad input never hurts anyone else.

#![allow(clippy::unwrap_used)]

#[path = "worker_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use protocol::frames::{ControlFrame, ServerFrame};
use protocol::{ErrorCode, Event, MessageId};
use serde_json::json;
use support::{Options, Received, TestApp};
use tokio_tungstenite::tungstenite::Message;

async fn expect_error(ws: &mut support::Client, code: ErrorCode) {
    loop {
        match ws.frame().await {
            ServerFrame::Control(ControlFrame::Error {
                code: got, message, ..
            }) => {
                assert_eq!(got, code, "{message}");
                return;
            }
            ServerFrame::Event(_) => continue,
            other => panic!("expected error {code:?}, got {other:?}"),
        }
    }
}

/// After whatever happened, another client on the same gateway chats fine.
async fn gateway_still_serves(app: &TestApp) {
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    let (id, _) = ws.chat("still alive?").await;
    let events = ws.until_terminal(id).await;
    assert!(matches!(events.last().unwrap().event, Event::Done { .. }));
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_lives_on() {
    let app = TestApp::start().await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    let cases: Vec<(Message, ErrorCode)> = vec![
        (Message::Text("{not json".into()), ErrorCode::BadRequest),
        (Message::Text("[1,2,3]".into()), ErrorCode::BadRequest),
        (Message::Text("\"chat\"".into()), ErrorCode::BadRequest),
        (
            Message::Text(r#"{"type":"shout"}"#.into()),
            ErrorCode::BadRequest,
        ),
        (
            Message::Text(r#"{"type":"chat"}"#.into()),
            ErrorCode::BadRequest,
        ),
        (
            Message::Text(r#"{"type":"chat","content":42}"#.into()),
            ErrorCode::BadRequest,
        ),
        (
            Message::Text(r#"{"type":"chat","content":"   "}"#.into()),
            ErrorCode::BadRequest,
        ),
        (
            Message::Text(r#"{"type":"chat","content":"bell\u0007"}"#.into()),
            ErrorCode::BadRequest,
        ),
        (
            Message::Text(r#"{"type":"chat","content":"x","message_id":"not-a-uuid"}"#.into()),
            ErrorCode::BadRequest,
        ),
        (
            Message::Text(r#"{"type":"chat","content":"x","model":"no-such-model"}"#.into()),
            ErrorCode::BadRequest,
        ),
        (
            Message::Text(
                r#"{"type":"cancel","message_id":"c232ab00-9414-11ec-b3c8-9f6bdeced846"}"#.into(),
            ),
            ErrorCode::BadRequest,
        ),
        (
            Message::Text(
                format!(r#"{{"type":"cancel","message_id":"{}"}}"#, MessageId::new()).into(),
            ),
            ErrorCode::NotFound,
        ),
        (
            Message::Text(r#"{"type":"resume","after_seq":-5}"#.into()),
            ErrorCode::BadRequest,
        ),
        (
            Message::Binary(vec![0, 159, 146, 150].into()),
            ErrorCode::BadRequest,
        ),
        (
            Message::Text(
                json!({"type":"chat","content":"x".repeat(40 * 1024)})
                    .to_string()
                    .into(),
            ),
            ErrorCode::TooLarge,
        ),
    ];
    for (message, code) in cases {
        let shown = format!("{message:?}").chars().take(80).collect::<String>();
        ws.send_raw(message).await;
        match ws.frame().await {
            ServerFrame::Control(ControlFrame::Error { code: got, .. }) => {
                assert_eq!(got, code, "{shown}")
            }
            other => panic!("{shown}: expected {code:?}, got {other:?}"),
        }
    }
    // Same connection, still good.
    let (id, _) = ws.chat("after all that").await;
    ws.until_terminal(id).await;
    gateway_still_serves(&app).await;
}

#[tokio::test]
async fn an_oversize_frame_closes_with_1009_and_others_are_fine() {
    let app = TestApp::start_with(Options {
        gateway_args: vec!["--max-frame-bytes".into(), "4096".into()],
        ..Default::default()
    })
    .await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    ws.send_raw(Message::Text("x".repeat(100_000).into())).await;
    let code = loop {
        match ws.recv().await {
            Received::Closed(code) => break code,
            Received::Frame(_) => continue,
        }
    };
    assert_eq!(code, Some(1009));
    gateway_still_serves(&app).await;
}

#[tokio::test]
async fn a_burst_of_a_thousand_frames_is_rate_limited_not_fatal() {
    let app = TestApp::start().await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    for _ in 0..1000 {
        ws.send_raw(Message::Text(r#"{"type":"ping"}"#.into()))
            .await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 1000 {
        match tokio::time::timeout(Duration::from_secs(5), ws.frame()).await {
            Ok(ServerFrame::Control(ControlFrame::Pong)) => pongs += 1,
            Ok(ServerFrame::Control(ControlFrame::Error {
                code: ErrorCode::RateLimited,
                ..
            })) => limited += 1,
            Ok(other) => panic!("{other:?}"),
            // Refusals are best effort under a flood; fewer than 1000 replies is fine.
            Err(_) => break,
        }
    }
    assert!(
        (40..200).contains(&pongs),
        "the burst allowance was served: {pongs}"
    );
    assert!(limited > 0, "excess frames were refused");
    // The connection itself survives the flood.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send_raw(Message::Text(r#"{"type":"ping"}"#.into()))
        .await;
    loop {
        match ws.frame().await {
            ServerFrame::Control(ControlFrame::Pong) => break,
            ServerFrame::Control(ControlFrame::Error {
                code: ErrorCode::RateLimited,
                ..
            }) => continue,
            other => panic!("{other:?}"),
        }
    }
    gateway_still_serves(&app).await;
}

#[tokio::test]
async fn a_third_message_in_flight_is_rate_limited() {
    let app = TestApp::start_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    ws.chat("one").await;
    ws.chat("two").await;
    ws.send_json(json!({"type": "chat", "content": "three"}))
        .await;
    expect_error(&mut ws, ErrorCode::RateLimited).await;
    let response = app
        .http
        .post(format!("{}/api/chat?session={session}", app.base()))
        .bearer_auth(&token)
        .json(&json!({"content": "four"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_and_keeps_what_it_accepted() {
    let app = TestApp::start_with(Options {
        gateway_args: vec!["--queue-max-msgs".into(), "2".into()],
        worker: false,
        ..Default::default()
    })
    .await;
    let mut accepted = Vec::new();
    for _ in 0..2 {
        let (session, token) = app.new_session().await;
        let response = app
            .http
            .post(format!("{}/api/chat?session={session}", app.base()))
            .bearer_auth(&token)
            .json(&json!({"content": "queued"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        accepted.push((session, token));
    }
    let (session, token) = app.new_session().await;
    let response = app
        .http
        .post(format!("{}/api/chat?session={session}", app.base()))
        .bearer_auth(&token)
        .json(&json!({"content": "one too many"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    // The refused question's session shows why it got no answer.
    let events = app.events(&session, &token, 0).await;
    assert!(matches!(
        events.last().unwrap().event,
        Event::Error {
            code: ErrorCode::Overloaded,
            ..
        }
    ));

    // A worker arrives: both accepted jobs are served.
    let worker = worker::spawn(<worker::WorkerConfig as clap::Parser>::parse_from([
        "worker",
        "--nats-url",
        &app.nats.url(),
        "--metrics-listen",
        "127.0.0.1:0",
        "--demo-tokens-per-sec",
        "0",
        "--queue-max-msgs",
        "2",
    ]))
    .await
    .unwrap();
    for (session, token) in &accepted {
        let mut ws = app.connect(session, token, Some(0)).await;
        ws.ready().await;
        loop {
            if let ServerFrame::Event(e) = ws.frame().await {
                if matches!(e.event, Event::Done { .. }) {
                    break;
                }
            }
        }
    }
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_stops_a_running_answer_within_200ms_exactly_once() {
    let app = TestApp::start_with(Options {
        worker_args: vec![
            "--demo-tokens-per-sec".into(),
            "20".into(),
            "--demo-answer-tokens".into(),
            "400".into(),
        ],
        ..Default::default()
    })
    .await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    let (id, _) = ws.chat("a slow answer").await;
    // Wait until it streams.
    loop {
        if let ServerFrame::Event(e) = ws.frame().await {
            if matches!(e.event, Event::Chunk { .. }) {
                break;
            }
        }
    }
    let sent = Instant::now();
    ws.send_json(json!({"type": "cancel", "message_id": id}))
        .await;
    let elapsed = loop {
        if let ServerFrame::Event(e) = ws.frame().await {
            if matches!(e.event, Event::Cancelled { .. }) {
                break sent.elapsed();
            }
        }
    };
    assert!(
        elapsed < Duration::from_millis(200),
        "cancelled after {elapsed:?}"
    );
    // A second cancel of the finished message is a no-op, not an error.
    ws.send_json(json!({"type": "cancel", "message_id": id}))
        .await;
    ws.send_json(json!({"type": "ping"})).await;
    assert!(matches!(
        ws.frame().await,
        ServerFrame::Control(ControlFrame::Pong)
    ));
    let events = app.events(&session, &token, 0).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.event, Event::Cancelled { .. }))
            .count(),
        1
    );
    assert!(!events.iter().any(|e| matches!(e.event, Event::Done { .. })));
    // REST: unknown message → 404.
    let response = app
        .http
        .post(format!("{}/api/cancel?session={session}", app.base()))
        .bearer_auth(&token)
        .json(&json!({"message_id": MessageId::new()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn rest_input_errors_are_json_with_the_right_status() {
    let app = TestApp::start_with(Options {
        gateway_args: vec!["--max-body-bytes".into(), "1024".into()],
        worker: false,
        ..Default::default()
    })
    .await;
    let (session, token) = app.new_session().await;
    let chat = format!("{}/api/chat?session={session}", app.base());
    let cases = [
        (
            app.http.post(&chat).bearer_auth(&token).body("{nope"),
            400,
            "bad_request",
        ),
        (
            app.http
                .post(&chat)
                .bearer_auth(&token)
                .body("x".repeat(5000)),
            413,
            "too_large",
        ),
        (
            app.http
                .post(format!("{}/api/chat?session=nope", app.base()))
                .bearer_auth(&token)
                .body("{}"),
            400,
            "bad_request",
        ),
        (
            app.http
                .post(format!(
                    "{}/api/chat?session={}",
                    app.base(),
                    protocol::SessionId::new()
                ))
                .bearer_auth(&token)
                .body("{}"),
            404,
            "not_found",
        ),
        (
            app.http
                .get(format!(
                    "{}/api/events?session={session}&after_seq=-1",
                    app.base()
                ))
                .bearer_auth(&token),
            400,
            "bad_request",
        ),
        (
            app.http
                .get(format!(
                    "{}/api/events?session={session}&after_seq=x",
                    app.base()
                ))
                .bearer_auth(&token),
            400,
            "bad_request",
        ),
    ];
    for (request, status, code) in cases {
        let response = request
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
    }
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1012() {
    let app = TestApp::start_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    let TestApp { gateway, nats, .. } = app;
    let stopping = tokio::spawn(gateway.shutdown());
    assert!(matches!(ws.recv().await, Received::Closed(Some(1012))));
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    drop(nats);
}

#[tokio::test]
async fn health_is_503_when_nats_is_gone() {
    let mut app = TestApp::start_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let url = format!("{}/health", app.base());
    let body: serde_json::Value = app
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["nats"], "connected");
    assert_eq!(body["node"], "gw-test");
    app.nats.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = app.http.get(&url).send().await.unwrap().status();
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "health stayed {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_cancel_sent_to_another_gateway_still_stops_the_answer() {
    let app = TestApp::start_with(Options {
        worker_args: vec![
            "--demo-tokens-per-sec".into(),
            "20".into(),
            "--demo-answer-tokens".into(),
            "400".into(),
        ],
        ..Default::default()
    })
    .await;
    // A second gateway on the same NATS: the cancel goes there.
    let other = gateway::spawn(<gateway::GatewayConfig as clap::Parser>::parse_from([
        "gateway",
        "--nats-url",
        &app.nats.url(),
        "--listen",
        "127.0.0.1:0",
        "--node",
        "gw-other",
    ]))
    .await
    .unwrap();
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    let (id, _) = ws.chat("cancel me from elsewhere").await;
    loop {
        if let ServerFrame::Event(e) = ws.frame().await {
            if matches!(e.event, Event::Chunk { .. }) {
                break;
            }
        }
    }
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
    let elapsed = loop {
        if let ServerFrame::Event(e) = ws.frame().await {
            if matches!(e.event, Event::Cancelled { .. }) {
                break sent.elapsed();
            }
            assert!(
                !matches!(e.event, Event::Done { .. }),
                "the answer completed instead"
            );
        }
    };
    assert!(
        elapsed < Duration::from_millis(200),
        "cancelled after {elapsed:?}"
    );
    other.shutdown().await.unwrap();
}
