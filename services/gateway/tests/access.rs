//! Only a session's token opens it: REST answers 401/400 with a JSON
//! error, a socket gets an error frame and a policy close, and neither
//! ever sees the session's events. A page of another site cannot open a
//! socket at all.

mod support;

use protocol::frames::{ControlFrame, ServerFrame};
use protocol::{CloseCode, ErrorCode, MessageId, SessionId};
use serde_json::json;
use support::{assert_rest_error, Received, Script, TestApp, Ws};

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_and_never_sees_events() {
    let script = Script::words(&["private ", "answer"]);
    let app = TestApp::builder().scripted_worker(script).start().await;
    let (session, token) = app.new_session().await;
    let (_, other_token) = app.new_session().await;
    let wrong = "0".repeat(64);

    // REST: wrong, missing and another session's tokens; unknown session; bad id.
    for (post, path) in [
        (true, "/api/chat"),
        (true, "/api/cancel"),
        (false, "/api/history"),
        (false, "/api/events"),
    ] {
        let url = app.url(&format!("{path}?session={session}"));
        let body = json!({"content": "hi", "message_id": MessageId::new()});
        for auth in [Some(wrong.as_str()), Some(other_token.as_str()), None] {
            let mut request = match post {
                true => app.http.post(&url).json(&body),
                false => app.http.get(&url),
            };
            if let Some(auth) = auth {
                request = request.bearer_auth(auth);
            }
            let response = request.send().await.unwrap();
            assert_rest_error(response, 401, ErrorCode::Unauthorized).await;
        }
        // GET on a POST route is 405; check the GETs only.
        if !post {
            // An unknown session is the same 401 as a wrong token: no
            // oracle of which session ids exist.
            let unknown = format!("{path}?session={}", SessionId::new());
            let response = app.get(&unknown, &token).await;
            assert_rest_error(response, 401, ErrorCode::Unauthorized).await;
            let response = app.get(&format!("{path}?session=not-a-uuid"), &token).await;
            assert_rest_error(response, 400, ErrorCode::BadRequest).await;
        }
    }

    // WebSocket: the owner chats while intruders knock.
    let mut owner = app.connect(session, &token, None).await;
    owner.ready().await;
    let mut intruders = Vec::new();
    let auth = |token: &str| Some(json!({"type": "auth", "token": token}));
    for (query, first) in [
        (format!("?session={session}"), auth(&wrong)),
        (format!("?session={session}"), auth(&other_token)),
        (format!("?session={session}"), auth("")),
        // No auth frame: another frame first.
        (format!("?session={session}"), Some(json!({"type": "ping"}))),
        (format!("?session={}", SessionId::new()), auth(&token)),
        (String::from("?session=nope"), auth(&token)),
        // The right token, but in the URL.
        (format!("?session={session}&token={token}"), None),
    ] {
        let mut ws = Ws::connect(&app.ws_url(&query)).await;
        if let Some(first) = &first {
            ws.send_json(first.clone()).await;
        }
        let what = format!("{query} then {first:?}");
        intruders.push((what, ws));
    }
    let (id, _) = owner.chat("a secret question").await;
    owner.until_terminal(id).await;
    for (query, mut ws) in intruders {
        let mut saw_error = false;
        loop {
            match ws.recv().await {
                Received::Frame(ServerFrame::Control(ControlFrame::Error { code, .. })) => {
                    // Only a malformed id is told apart; an unknown
                    // session looks like a wrong token.
                    let expected = if query.contains("session=nope") {
                        ErrorCode::BadRequest
                    } else {
                        ErrorCode::Unauthorized
                    };
                    assert_eq!(code, expected, "{query}");
                    saw_error = true;
                }
                Received::Frame(other) => panic!("{query}: an intruder got {other:?}"),
                Received::Closed(code) => {
                    assert_eq!(code, Some(CloseCode::PolicyViolation.code()), "{query}");
                    break;
                }
            }
        }
        assert!(saw_error, "{query}: an error frame before the close");
    }
}

/// Opens `/ws/chat` with an `Origin` header: the handshake's HTTP status.
async fn handshake_status(app: &TestApp, origin: &str) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let mut request = app.ws_url("").into_client_request().expect("a ws URL");
    let origin = origin.parse().expect("an Origin value");
    request.headers_mut().insert("origin", origin);
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error");
            assert_eq!(body["error"]["code"], ErrorCode::Forbidden.as_str());
            response.status().as_u16()
        }
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_page_of_another_site_cannot_open_a_socket() {
    let app = TestApp::builder()
        .gateway_args(&["--allowed-origins", "https://app.example.com"])
        .start()
        .await;
    let own = format!("http://{}", app.addr);
    assert_eq!(handshake_status(&app, &own).await, 101, "same origin");
    assert_eq!(
        handshake_status(&app, "https://app.example.com").await,
        101,
        "allowed by the list"
    );
    for foreign in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        assert_eq!(handshake_status(&app, foreign).await, 403, "{foreign}");
    }
    // Without an Origin (not a browser) the token decides, as before.
    Ws::connect(&app.ws_url("")).await.ready().await;
}

#[tokio::test]
async fn a_socket_authenticates_with_its_first_frame_in_time_and_not_in_its_url() {
    let app = TestApp::builder()
        .gateway_args(&["--auth-timeout-ms", "300"])
        .start()
        .await;
    let (session, token) = app.new_session().await;
    // The auth frame opens it.
    app.connect(session, &token, None).await.ready().await;

    // Nothing sent: refused once the time is up.
    let mut silent = Ws::connect(&app.ws_url(&format!("?session={session}"))).await;
    let message = silent.expect_error(ErrorCode::Unauthorized).await;
    assert!(message.contains("auth"), "{message}");
    silent.expect_close(CloseCode::PolicyViolation).await;

    // A token in the URL: refused, and the reason names the auth frame.
    let url = app.ws_url(&format!("?session={session}&token={token}"));
    let mut in_url = Ws::connect(&url).await;
    let message = in_url.expect_error(ErrorCode::Unauthorized).await;
    assert!(message.contains("\"auth\""), "{message}");
    in_url.expect_close(CloseCode::PolicyViolation).await;

    // An authenticated socket may not authenticate again.
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;
    ws.send_json(json!({"type": "auth", "token": token})).await;
    ws.expect_error(ErrorCode::BadRequest).await;
}

#[tokio::test]
async fn old_clients_may_put_the_token_in_the_url_when_allowed() {
    let app = TestApp::builder()
        .gateway_args(&["--allow-url-token"])
        .start()
        .await;
    let (session, token) = app.new_session().await;
    let url = app.ws_url(&format!("?session={session}&token={token}"));
    Ws::connect(&url).await.ready().await;
    let wrong = app.ws_url(&format!("?session={session}&token=nope"));
    let mut refused = Ws::connect(&wrong).await;
    refused.expect_error(ErrorCode::Unauthorized).await;
    refused.expect_close(CloseCode::PolicyViolation).await;
}

#[tokio::test]
async fn a_revoked_session_closes_its_sockets_and_opens_nothing_more() {
    let app = TestApp::start().await;
    let other_gateway = app.another_gateway("gw-other").await;
    let (session, token, mut here) = app.attach().await;
    let url = format!("ws://{}/ws/chat?session={session}", other_gateway.addr());
    let mut there = Ws::connect(&url).await;
    there
        .send_json(json!({"type": "auth", "token": token}))
        .await;
    there.ready().await;
    let (bystander, bystander_token) = app.new_session().await;

    let revoke = app.url(&format!("/api/sessions/{session}"));
    // Only the session's own token revokes it.
    for wrong in [None, Some(bystander_token.as_str()), Some("nope")] {
        let mut request = app.http.delete(&revoke);
        if let Some(token) = wrong {
            request = request.bearer_auth(token);
        }
        assert_rest_error(request.send().await.unwrap(), 401, ErrorCode::Unauthorized).await;
    }
    let response = app
        .http
        .delete(&revoke)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    // Its sockets close on every gateway; its token opens nothing more.
    here.expect_close(CloseCode::PolicyViolation).await;
    there.expect_close(CloseCode::PolicyViolation).await;
    let history = format!("/api/history?session={session}");
    assert_rest_error(
        app.get(&history, &token).await,
        401,
        ErrorCode::Unauthorized,
    )
    .await;
    let mut again = app.connect(session, &token, None).await;
    again.expect_error(ErrorCode::Unauthorized).await;
    let kv = app
        .js()
        .await
        .get_key_value(protocol::subjects::SESSIONS_BUCKET)
        .await
        .unwrap();
    let record = kv
        .entry(protocol::subjects::session_key(session))
        .await
        .unwrap();
    assert!(
        record.is_none_or(|e| e.operation != async_nats::jetstream::kv::Operation::Put),
        "the session's record is gone"
    );
    // Another session is untouched.
    let history = format!("/api/history?session={bystander}");
    assert_eq!(app.get(&history, &bystander_token).await.status(), 200);
    other_gateway.shutdown().await.unwrap();
}
