//! Bad input and overload: nothing a client sends kills its connection or
//! its neighbours; each refusal is a clear error (a frame, a JSON body, or
//! a close code when the WebSocket itself is misused).

mod support;

use std::time::Duration;

use protocol::frames::{ControlFrame, ServerFrame};
use protocol::{CloseCode, ErrorCode, Event, EventKind, MessageId, SessionId};
use serde_json::json;
use support::{answer, assert_rest_error, eventually, Received, Script, TestApp, Ws};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn bad_input_gets_clear_errors_and_neighbours_chat_on() {
    let app = TestApp::builder()
        .gateway_args(&["--max-prompt-bytes", "1000", "--max-frame-bytes", "4096"])
        .gateway_args(&["--models", "small,large"])
        .scripted_worker(Script::words(&["fine", "."]))
        .start()
        .await;
    let (session, token, mut ws) = app.attach().await;
    let id = MessageId::new();
    let bad_request = [
        "{not json",
        "[1,2]",
        "\"chat\"",
        r#"{"content":"no type"}"#,
        r#"{"type":"shout"}"#,
        r#"{"type":"chat"}"#,
        r#"{"type":"chat","content":5}"#,
        r#"{"type":"chat","content":""}"#,
        r#"{"type":"chat","content":"  \n "}"#,
        r#"{"type":"chat","content":"bell\u0007"}"#,
        r#"{"type":"chat","content":"hi","message_id":"not-a-uuid"}"#,
        r#"{"type":"chat","content":"hi","model":"huge"}"#,
        r#"{"type":"cancel","message_id":"nope"}"#,
        // A valid UUID, but version 1: not a message id.
        r#"{"type":"cancel","message_id":"c232ab00-9414-11ec-b3c8-9f6bdeced846"}"#,
        r#"{"type":"resume","after_seq":-1}"#,
        r#"{"type":"resume","after_seq":"3"}"#,
        r#"{"type":"resume","after_seq":999999}"#,
    ]
    .map(|frame| (frame.to_string(), ErrorCode::BadRequest));
    let other = [
        (
            json!({"type": "chat", "content": "y".repeat(1001)}).to_string(),
            ErrorCode::TooLarge,
        ),
        (
            json!({"type": "cancel", "message_id": id}).to_string(),
            ErrorCode::NotFound,
        ),
    ];
    for (frame, code) in bad_request.into_iter().chain(other) {
        ws.send(Message::Text(frame.clone().into())).await;
        match ws.control().await {
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
    ws.send(Message::Binary(vec![0, 159, 146, 150].into()))
        .await;
    ws.expect_error(ErrorCode::BadRequest).await;
    // The connection lives on, and a good chat with a known model works.
    ws.ping().await;
    ws.send_json(json!({"type": "chat", "content": "ok\tthen\r\n", "model": "small"}))
        .await;
    assert!(matches!(ws.control().await, ControlFrame::Accepted { .. }));

    let mut big = app.connect(session, &token, None).await;
    big.ready().await;
    big.send(Message::Text("z".repeat(8_000).into())).await;
    big.expect_close(CloseCode::TooBig).await;

    let mut garbled = app.connect(session, &token, None).await;
    garbled.ready().await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    garbled.send(Message::Frame(frame)).await;
    garbled.expect_close(CloseCode::InvalidData).await;

    // after_seq on connect: not a number, negative, beyond the stream.
    for after in ["abc", "-1", "1.5", "99999999"] {
        let query = format!("?session={session}&after_seq={after}");
        let mut bad = Ws::connect(&app.ws_url(&query)).await;
        bad.send_json(json!({"type": "auth", "token": token})).await;
        let message = bad.expect_error(ErrorCode::BadRequest).await;
        assert!(message.contains("after_seq"), "{after}: {message}");
        bad.expect_close(CloseCode::PolicyViolation).await;
    }

    // Through all of that, another client on the gateway chats fine.
    let mut other = Ws::connect(&app.ws_url("")).await;
    other.ready().await;
    let (id, _) = other.chat("still there?").await;
    let events = other.until_terminal(id).await;
    assert_eq!(answer(&events, id), "fine.");
    ws.ping().await;
}

#[tokio::test]
async fn a_websocket_protocol_violation_closes_with_1002() {
    let app = TestApp::start().await;
    let (session, token, mut neighbour) = app.attach().await;
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;
    // A reserved bit set with no extension negotiated: RFC 6455 §5.2 forbids it.
    let mut frame = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    ws.send(Message::Frame(frame)).await;
    ws.expect_close(CloseCode::ProtocolError).await;
    neighbour.ping().await;
}

#[tokio::test]
async fn rest_input_errors_are_json_with_the_right_status() {
    let app = TestApp::builder()
        .gateway_args(&["--max-body-bytes", "1024"])
        .start()
        .await;
    let (session, token) = app.new_session().await;
    let chat = |session: &str| app.url(&format!("/api/chat?session={session}"));
    let events = |after: &str| app.url(&format!("/api/events?session={session}&after_seq={after}"));
    let own = chat(&session.to_string());
    let unknown = chat(&SessionId::new().to_string());
    let cases = [
        (
            app.http.post(&own).body("{nope"),
            400,
            ErrorCode::BadRequest,
        ),
        (
            app.http.post(&own).body("x".repeat(5000)),
            413,
            ErrorCode::TooLarge,
        ),
        (
            app.http.post(chat("nope")).body("{}"),
            400,
            ErrorCode::BadRequest,
        ),
        (
            app.http.post(unknown).body("{}"),
            401,
            ErrorCode::Unauthorized,
        ),
        (app.http.get(events("-1")), 400, ErrorCode::BadRequest),
        (app.http.get(events("x")), 400, ErrorCode::BadRequest),
    ];
    for (request, status, code) in cases {
        let request = request.bearer_auth(&token);
        let response = request.header("content-type", "application/json").send();
        assert_rest_error(response.await.unwrap(), status, code).await;
    }
}

#[tokio::test]
async fn in_flight_and_frame_rate_limits_refuse_without_killing() {
    let app = TestApp::builder()
        .gateway_args(&["--frames-per-sec", "20", "--frame-burst", "40"])
        .start()
        .await;
    let (session, token, mut ws) = app.attach().await;
    // No worker: two messages stay in flight, the third is refused.
    two_accepted_then_refused(&app, session, &token, &mut ws, ErrorCode::RateLimited).await;

    // A burst of 1,000 frames: the burst allowance is served, the rest refused.
    for _ in 0..1_000 {
        ws.send_json(json!({"type": "ping"})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    // Refusals are best effort under a flood: read until the replies stop.
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
    // Half a second of quiet refilled the bucket: the connection lives on.
    ws.ping().await;
}

#[tokio::test]
async fn a_full_queue_is_refused_as_overloaded_and_keeps_what_it_accepted() {
    let app = TestApp::builder()
        .gateway_args(&["--max-in-flight-per-session", "10"])
        .layout_args(&["--queue-max-msgs", "2"])
        .start()
        .await;
    let (session, token, mut ws) = app.attach().await;
    two_accepted_then_refused(&app, session, &token, &mut ws, ErrorCode::Overloaded).await;
    let queued = app.queued_jobs().await;
    assert_eq!(queued, 2, "the accepted jobs are still queued");
    // The refusals are in the session's stream, so a reconnect shows why.
    let (events, _) = app.events(session, &token, 0).await;
    let overloaded = events.iter().filter(|e| {
        matches!(
            e.event,
            Event::Error {
                code: ErrorCode::Overloaded,
                ..
            }
        )
    });
    assert_eq!(overloaded.count(), 2);

    // A worker drains the queue; the refused messages no longer count.
    let worker = app.scripted_worker(Script::words(&["ok"])).await;
    eventually("the queue to drain", || async {
        app.queued_jobs().await == 0
    })
    .await;
    let (id, _) = ws.chat("five").await;
    let events = ws.until_terminal(id).await;
    assert_eq!(events.last().unwrap().event.kind(), EventKind::Done);
    // The worker counts a job after its ack, which can trail the `done`.
    eventually("three jobs served", || async { worker.jobs() >= 3 }).await;
}

/// Two chats are accepted; a third on the socket and a fourth by REST are
/// refused with `code` (REST: 429 with `Retry-After`).
async fn two_accepted_then_refused(
    app: &TestApp,
    session: SessionId,
    token: &str,
    ws: &mut Ws,
    code: ErrorCode,
) {
    ws.chat("one").await;
    ws.chat("two").await;
    ws.send_json(json!({"type": "chat", "content": "three"}))
        .await;
    ws.expect_error(code).await;
    let path = format!("/api/chat?session={session}");
    let response = app.post(&path, token, json!({"content": "four"})).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_rest_error(response, 429, code).await;
}

#[tokio::test]
async fn a_session_opens_at_most_its_cap_of_sockets() {
    let app = TestApp::builder()
        .gateway_args(&["--max-sockets-per-session", "2"])
        .start()
        .await;
    let (session, token) = app.new_session().await;
    let mut first = app.connect(session, &token, None).await;
    first.ready().await;
    let mut second = app.connect(session, &token, None).await;
    second.ready().await;

    let mut third = app.connect(session, &token, None).await;
    third.expect_error(ErrorCode::RateLimited).await;
    third.expect_close(CloseCode::TryAgainLater).await;
    // Another session is not affected.
    app.attach().await;

    // One closes: the session has room again.
    drop(first);
    eventually("a socket of the session attaches again", || async {
        let mut again = app.connect(session, &token, None).await;
        matches!(
            again.recv().await,
            Received::Frame(ServerFrame::Control(ControlFrame::Ready { .. }))
        )
    })
    .await;
}
