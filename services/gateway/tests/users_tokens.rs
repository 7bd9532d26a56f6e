//! `GATEWAY_AUTH=jwt`, tokens over time: revoking closes the user's
//! sockets on every gateway and refuses older tokens; a socket's token is
//! refreshed in place or closes it; keys come from a JWKS URL and a rotated
//! key is fetched; the AI SDK endpoints take the user's JWT.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use protocol::frames::{ControlFrame, ServerFrame};
use protocol::{CloseCode, ErrorCode, EventKind, SessionId};
use serde_json::{json, Value};
use support::login::{list, new_session, socket, two_gateways, Login};
use support::{assert_rest_error, Received, TestApp, Ws, WAIT};

#[tokio::test]
async fn revoking_closes_the_users_sockets_on_every_gateway_and_refuses_older_tokens() {
    let login = Login::new();
    let (app, second) = two_gateways(&login).await;
    let stolen = Login::token("alice", 600);
    let bob = Login::token("bob", 600);
    let session = new_session(&app, &stolen).await;
    let mut laptop = socket(app.addr, Some(session), &stolen).await;
    let mut phone = socket(second.addr(), None, &stolen).await;
    let mut bobs = socket(second.addr(), None, &bob).await;

    let response = app
        .http
        .delete(app.url("/api/users/me/sockets"))
        .bearer_auth(&stolen)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    laptop.expect_close(CloseCode::PolicyViolation).await;
    phone.expect_close(CloseCode::PolicyViolation).await;
    bobs.ping().await;

    // The old token opens nothing any more; one issued after does.
    assert_eq!(app.get("/api/sessions", &stolen).await.status(), 401);
    let mut ws = Ws::connect(&app.ws_url(&format!("?session={session}"))).await;
    ws.send_json(json!({"type": "auth", "token": stolen})).await;
    ws.expect_error(ErrorCode::Unauthorized).await;
    let later = jsonwebtoken::get_current_timestamp() + 1;
    let fresh = Login::token_with(json!({"sub": "alice", "exp": later + 600, "iat": later}));
    assert_eq!(app.get("/api/sessions", &fresh).await.status(), 200);
    let mut again = socket(second.addr(), Some(session), &fresh).await;
    again.ping().await;
    // No iat: when it was issued is unknown, so it is refused too.
    let undated = Login::token_with(json!({"sub": "alice", "exp": later + 600}));
    assert_eq!(app.get("/api/sessions", &undated).await.status(), 401);
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refreshed_socket_keeps_its_position_and_an_unrefreshed_one_closes() {
    let login = Login::new();
    let app = TestApp::builder()
        .gateway_args(&login.args(&["--token-expiring-ms", "4500"]))
        .real_worker()
        .start()
        .await;
    let short = Login::token("alice", 5);
    let session = new_session(&app, &short).await;
    let mut ws = socket(app.addr, Some(session), &short).await;
    let first = ws.answered("before the refresh").await;

    let in_ms = match ws.token_expiring().await {
        ControlFrame::TokenExpiring { in_ms } => in_ms,
        other => panic!("expected token_expiring, got {other:?}"),
    };
    assert!(in_ms <= 5_000, "{in_ms}");
    // Another user's token does not refresh this socket.
    ws.send_json(json!({"type": "refresh", "token": Login::token("bob", 600)}))
        .await;
    ws.expect_error(ErrorCode::Unauthorized).await;
    ws.send_json(json!({"type": "refresh", "token": Login::token("alice", 600)}))
        .await;
    ws.ping().await;
    // Past the old token's expiry (the condition waited for is the time
    // itself) the socket is open, and carries on where it was: the next
    // answer's events follow the first's, none again.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let (second_id, seq) = ws.chat("after the refresh").await;
    let events = ws.until_terminal(second_id).await;
    assert!(events.iter().all(|e| e.event.message_id() != Some(first)));
    assert_eq!(events[0].seq, seq);
    assert_eq!(events.last().unwrap().event.kind(), EventKind::Done);

    // Without a refresh: warned, then closed with 1008 `token expired`.
    let mut ws = socket(app.addr, Some(session), &Login::token("alice", 2)).await;
    let mut warned = false;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.recv().await {
                Received::Frame(ServerFrame::Control(ControlFrame::TokenExpiring { .. })) => {
                    warned = true
                }
                Received::Frame(_) => {}
                Received::Closed(code) => return code,
            }
        }
    })
    .await
    .unwrap();
    assert!(warned);
    assert_eq!(closed, Some(CloseCode::PolicyViolation.code()));
}

/// A JWKS URL, as an identity provider serves it: read at start, read again
/// when a token names a key it does not know yet (a rotation).
#[tokio::test]
async fn keys_come_from_a_jwks_url_and_a_rotated_key_is_fetched() {
    use std::sync::{Arc, Mutex};

    let (first, first_jwk) = es256_key("first");
    let jwks = Arc::new(Mutex::new(json!({"keys": [first_jwk]})));
    let served = jwks.clone();
    let provider = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let keys = served.lock().unwrap().clone();
            async move { axum::Json(keys) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let server = tokio::spawn(async move { axum::serve(listener, provider).await });
    let app = TestApp::builder()
        // Read again at once on an unknown kid (60 s apart by default).
        .gateway_args(&[
            "--auth",
            "jwt",
            "--jwt-jwks-url",
            &url,
            "--jwt-jwks-refetch-secs",
            "0",
        ])
        .start()
        .await;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({"sub": "alice", "exp": now + 600, "iat": now});
    let sign = |kid: &str, key: &EncodingKey| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        encode(&header, &claims, key).unwrap()
    };
    assert_eq!(
        app.get("/api/sessions", &sign("first", &first))
            .await
            .status(),
        200
    );
    // The provider rotates: the new key is fetched on its first token.
    let (second, second_jwk) = es256_key("second");
    jwks.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(second_jwk);
    assert_eq!(
        app.get("/api/sessions", &sign("second", &second))
            .await
            .status(),
        200
    );
    // An HMAC token where the keys are public, and a key nobody published.
    let hmac = Login::token("alice", 600);
    assert_eq!(app.get("/api/sessions", &hmac).await.status(), 401);
    let (stranger, _) = es256_key("stranger");
    assert_eq!(
        app.get("/api/sessions", &sign("stranger", &stranger))
            .await
            .status(),
        401
    );
    server.abort();
}

/// An ES256 key pair and its public JWK named `kid`.
fn es256_key(kid: &str) -> (EncodingKey, Value) {
    let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .unwrap();
    let der = pair.to_pkcs8v1().unwrap();
    let key = EncodingKey::from_ec_der(der.as_ref());
    let mut jwk = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap(),
    )
    .unwrap();
    jwk["kid"] = json!(kid);
    (key, jwk)
}

/// The AI SDK's endpoints take the JWT through the same extractor: the
/// owner is served, another user gets `not_found`, a bad token 401.
#[tokio::test]
async fn the_ai_sdk_endpoints_take_the_users_jwt() {
    let login = Login::new();
    let app = TestApp::builder()
        .gateway_args(&login.args(&[]))
        .real_worker()
        .start()
        .await;
    let alice = Login::token("alice", 600);
    let session = new_session(&app, &alice).await;
    let body = json!({
        "id": session.to_string(),
        "trigger": "submit-message",
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hello"}]}],
    });
    let mine = app.post("/api/ui/chat", &alice, body.clone()).await;
    assert_eq!(mine.status(), 200);
    assert_eq!(mine.headers()["content-type"], "text/event-stream");
    drop(mine);
    let foreign = app
        .post("/api/ui/chat", &Login::token("bob", 600), body.clone())
        .await;
    assert_rest_error(foreign, 404, ErrorCode::NotFound).await;
    let forged = app.post("/api/ui/chat", "not-a-jwt", body).await;
    assert_rest_error(forged, 401, ErrorCode::Unauthorized).await;
    let messages = app
        .get(
            &format!("/api/ui/chat/{session}/messages"),
            &Login::token("bob", 600),
        )
        .await;
    assert_rest_error(messages, 404, ErrorCode::NotFound).await;

    // A chat id the app chose and nobody holds becomes a session of the caller.
    let chosen = SessionId::new();
    let first = json!({
        "id": chosen.to_string(),
        "trigger": "submit-message",
        "messages": [{"id": "m2", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    });
    let created = app.post("/api/ui/chat", &alice, first.clone()).await;
    assert_eq!(created.status(), 200);
    drop(created);
    let listed = list(&app, &alice, "").await;
    let ids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(ids.contains(&chosen.to_string().as_str()), "{listed}");
    // Another user cannot take it over: the same answer as an unknown session.
    let taken = app
        .post("/api/ui/chat", &Login::token("bob", 600), first)
        .await;
    assert_rest_error(taken, 404, ErrorCode::NotFound).await;
    assert_eq!(
        list(&app, &Login::token("bob", 600), "").await["sessions"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
}
