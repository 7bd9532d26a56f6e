//! Bad input, limits and the ways a gateway ends: nothing a client sends
//! kills its neighbours; overload and floods are refused clearly; shutdown
//! closes sockets with 1012; `/health` follows the NATS connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use protocol::frames::{ControlFrame, ServerFrame};
use protocol::{ErrorCode, Event};
use serde_json::{json, Value};
use support::{eventually, Received, Script, ScriptedWorker, TestApp, Ws};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn bad_input_gets_clear_errors_and_neighbours_chat_on() {
    let app = TestApp::start_with(&[
        "--max-prompt-bytes",
        "1000",
        "--max-frame-bytes",
        "4096",
        "--models",
        "small,large",
    ])
    .await;
    let _worker = ScriptedWorker::start(&app, Script::words(&["fine", "."])).await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;
    let id = protocol::MessageId::new();
    for (frame, code) in [
        ("{not json".to_string(), ErrorCode::BadRequest),
        ("[1,2]".into(), ErrorCode::BadRequest),
        ("\"chat\"".into(), ErrorCode::BadRequest),
        (r#"{"content":"no type"}"#.into(), ErrorCode::BadRequest),
        (r#"{"type":"shout"}"#.into(), ErrorCode::BadRequest),
        (r#"{"type":"chat"}"#.into(), ErrorCode::BadRequest),
        (
            r#"{"type":"chat","content":5}"#.into(),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"chat","content":""}"#.into(),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"chat","content":"  \n "}"#.into(),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"chat","content":"bell\u0007"}"#.into(),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"chat","content":"hi","message_id":"not-a-uuid"}"#.into(),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"chat","content":"hi","model":"huge"}"#.into(),
            ErrorCode::BadRequest,
        ),
        (
            json!({"type": "chat", "content": "y".repeat(1001)}).to_string(),
            ErrorCode::TooLarge,
        ),
        (
            r#"{"type":"cancel","message_id":"nope"}"#.into(),
            ErrorCode::BadRequest,
        ),
        (
            json!({"type": "cancel", "message_id": id}).to_string(),
            ErrorCode::NotFound,
        ),
        (
            r#"{"type":"resume","after_seq":-1}"#.into(),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"resume","after_seq":"3"}"#.into(),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"resume","after_seq":999999}"#.into(),
            ErrorCode::BadRequest,
        ),
    ] {
        ws.send(Message::Text(frame.clone().into())).await;
        match ws.control().await.0 {
            ControlFrame::Error {
                code: got,
                message_id,
                ..
            } => {
                assert_eq!(got, code, "{frame}");
                if code == ErrorCode::NotFound {
                    assert_eq!(message_id, Some(id));
                }
            }
            other => panic!("{frame}: {other:?}"),
        }
    }
    ws.send(Message::Binary(vec![1, 2, 3].into())).await;
    ws.expect_error(ErrorCode::BadRequest).await;
    // The connection lives on, and a good chat with a known model works.
    ws.ping().await;
    ws.send_json(json!({"type": "chat", "content": "ok\tthen\r\n", "model": "small"}))
        .await;
    assert!(matches!(
        ws.control().await.0,
        ControlFrame::Accepted { .. }
    ));

    // Oversize frame: close 1009.
    let mut big = app.connect(session, &token, None).await;
    big.ready().await;
    big.send(Message::Text("z".repeat(8_000).into())).await;
    assert_eq!(big.expect_close().await, Some(1009));

    // Invalid UTF-8 in a text frame: close 1007.
    let mut garbled = app.connect(session, &token, None).await;
    garbled.ready().await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    garbled.send(Message::Frame(frame)).await;
    assert_eq!(garbled.expect_close().await, Some(1007));

    // after_seq on connect: not a number, negative, beyond the stream.
    for after in ["abc", "-1", "1.5", "99999999"] {
        let query = format!("?session={session}&token={token}&after_seq={after}");
        let mut bad = Ws::connect(&app.ws_url(&query)).await;
        let message = bad.expect_error(ErrorCode::BadRequest).await;
        assert!(message.contains("after_seq"), "{after}: {message}");
        assert_eq!(bad.expect_close().await, Some(1008), "{after}");
    }
    let response = app
        .http
        .get(format!(
            "{}/api/events?session={session}&after_seq=-4",
            app.base()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // A REST body over the limit: 413 with the JSON error.
    let response = app
        .http
        .post(format!("{}/api/chat?session={session}", app.base()))
        .bearer_auth(&token)
        .body(format!("{{\"content\":\"{}\"}}", "q".repeat(100_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_large");

    // Through all of that, another client on the gateway chats fine.
    let mut other = Ws::connect(&app.ws_url("")).await;
    other.ready().await;
    let (id, _, early) = other.chat("still there?").await;
    let events = other.until_terminal(id, early).await;
    assert_eq!(support::answer(&events, id), "fine.");
    ws.ping().await;
}

#[tokio::test]
async fn in_flight_and_frame_rate_limits_refuse_without_killing() {
    let app = TestApp::start_with(&["--frames-per-sec", "20", "--frame-burst", "40"]).await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;
    // No worker: two messages stay in flight, the third is refused.
    ws.chat("one").await;
    ws.chat("two").await;
    ws.send_json(json!({"type": "chat", "content": "three"}))
        .await;
    ws.expect_error(ErrorCode::RateLimited).await;
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

    // A burst of 1,000 frames: some pongs, then rate_limited; the socket lives.
    for _ in 0..1_000 {
        ws.send_json(json!({"type": "ping"})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while let Some(Received::Frame(frame)) = ws.recv_within(Duration::from_millis(500)).await {
        match frame {
            ServerFrame::Control(ControlFrame::Pong) => pongs += 1,
            ServerFrame::Control(ControlFrame::Error {
                code: ErrorCode::RateLimited,
                ..
            }) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((30..200).contains(&pongs), "{pongs} pongs");
    assert!(limited > 0, "no rate_limited frames");
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.ping().await;
    let health = app
        .http
        .get(format!("{}/health", app.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_full_queue_is_refused_as_overloaded_and_keeps_what_it_accepted() {
    let app =
        TestApp::start_with(&["--queue-max-msgs", "2", "--max-in-flight-per-session", "10"]).await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;
    let (first, _, _) = ws.chat("one").await;
    let (second, _, _) = ws.chat("two").await;
    ws.send_json(json!({"type": "chat", "content": "three"}))
        .await;
    ws.expect_error(ErrorCode::Overloaded).await;
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
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(
        app.queued_jobs().await,
        2,
        "the accepted jobs are still queued"
    );
    // The refusals are in the session's stream after their echoes.
    let (events, _) = app.events(session, &token, 0).await;
    let refusals = events
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                Event::Error {
                    code: ErrorCode::Overloaded,
                    ..
                }
            )
        })
        .count();
    assert_eq!(refusals, 2);
    // The refused messages no longer count: once the queue drains, chat works.
    let worker = ScriptedWorker::start(&app, Script::words(&["ok"])).await;
    eventually("the queue to drain", || async {
        app.queued_jobs().await == 0
    })
    .await;
    let (id, _, early) = ws.chat("five").await;
    let events = ws.until_terminal(id, early).await;
    assert!(matches!(events.last().unwrap().event, Event::Done { .. }));
    // The scripted worker counts a job after its ack, which can trail the
    // `done` the client already saw.
    eventually("the scripted worker to count three jobs", || async {
        worker.jobs.load(std::sync::atomic::Ordering::SeqCst) >= 3
    })
    .await;
    let _ = (first, second);
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1012() {
    let mut app = TestApp::start().await;
    let (session, token) = app.new_session().await;
    let mut a = app.connect(session, &token, None).await;
    let mut b = Ws::connect(&app.ws_url("")).await;
    a.ready().await;
    b.ready().await;
    let gateway = app.gateway.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), gateway.shutdown())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.expect_close().await, Some(1012));
    assert_eq!(b.expect_close().await, Some(1012));
    // Stopped accepting.
    assert!(tokio_tungstenite::connect_async(app.ws_url(""))
        .await
        .is_err());
}

#[tokio::test]
async fn health_follows_the_nats_connection() {
    let mut app = TestApp::start().await;
    let url = format!("{}/health", app.base());
    let response = app.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["nats"], "connected");
    assert_eq!(body["node"], "gw-test");
    app.nats.kill();
    eventually("/health to report 503", || async {
        app.http.get(&url).send().await.unwrap().status() == 503
    })
    .await;
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("chat_gateway_connections_open"));
}
