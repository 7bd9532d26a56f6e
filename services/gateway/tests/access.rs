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
    for query in [
        format!("?session={session}&token={wrong}"),
        format!("?session={session}&token={other_token}"),
        format!("?session={session}"),
        format!("?session={session}&token="),
        format!("?session={}&token={token}", SessionId::new()),
        format!("?session=nope&token={token}"),
    ] {
        intruders.push((query.clone(), Ws::connect(&app.ws_url(&query)).await));
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
