//! `GATEWAY_AUTH=jwt`: sessions owned by the token's user. Another user
//! gets `not_found` on every endpoint and frame, a bad token the one
//! uniform 401; the list is the caller's, paged; quotas hold per user
//! across gateways; every device of a user streams, cancels and
//! regenerates the same session; revoking closes the user's sockets on
//! every gateway; a socket's token is refreshed in place or closes it.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use protocol::frames::{ControlFrame, ServerFrame};
use protocol::users::SessionChange;
use protocol::{CloseCode, ErrorCode, EventKind, MessageId, SessionId};
use serde_json::{json, Value};
use support::{assert_rest_error, count, gateway_config, Received, TestApp, Ws, WAIT};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes-for-hs256";

/// The app's login, as the tests play it: HS256 tokens for any `sub`.
struct Login {
    _dir: tempfile::TempDir,
    secret_file: String,
}

impl Login {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-secret");
        std::fs::write(&path, SECRET).unwrap();
        Self {
            secret_file: path.to_str().unwrap().to_string(),
            _dir: dir,
        }
    }

    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--auth", "jwt", "--jwt-hmac-secret-file", &self.secret_file];
        args.extend_from_slice(extra);
        args
    }

    fn token_with(claims: Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    /// A token of `sub` valid for `ttl_secs`.
    fn token(sub: &str, ttl_secs: u64) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        Self::token_with(json!({"sub": sub, "exp": now + ttl_secs, "iat": now}))
    }
}

async fn create(app: &TestApp, gateway: std::net::SocketAddr, token: &str) -> reqwest::Response {
    app.http
        .post(format!("http://{gateway}/api/sessions"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn new_session(app: &TestApp, token: &str) -> SessionId {
    new_session_on(app, app.addr, token).await
}

async fn new_session_on(app: &TestApp, gateway: std::net::SocketAddr, token: &str) -> SessionId {
    let response = create(app, gateway, token).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert!(body.get("token").is_none(), "the JWT opens it: {body}");
    body["session_id"].as_str().unwrap().parse().unwrap()
}

async fn list(app: &TestApp, token: &str, query: &str) -> Value {
    let response = app.get(&format!("/api/sessions{query}"), token).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// A socket on `gateway` for `session` (or a new one), `ready` read.
async fn socket(gateway: std::net::SocketAddr, session: Option<SessionId>, token: &str) -> Ws {
    let query = session.map_or(String::new(), |s| format!("?session={s}"));
    let mut ws = Ws::connect(&format!("ws://{gateway}/ws/chat{query}")).await;
    ws.send_json(json!({"type": "auth", "token": token})).await;
    ws.ready().await;
    ws
}

/// The next `session_list` frame.
async fn list_change(ws: &mut Ws) -> (SessionChange, SessionId, Option<String>) {
    match ws.session_list().await {
        ControlFrame::SessionList {
            change,
            session_id,
            session,
        } => (change, session_id, session.map(|s| s.title)),
        other => panic!("expected session_list, got {other:?}"),
    }
}

/// A gateway in `jwt` mode with `login`'s keys, no worker.
async fn one_gateway(login: &Login) -> TestApp {
    TestApp::builder()
        .gateway_args(&login.args(&[]))
        .start()
        .await
}

/// Two gateways in `jwt` mode on one NATS (a user's devices on different
/// nodes), no worker.
async fn two_gateways(login: &Login) -> (TestApp, gateway::RunningGateway) {
    let app = one_gateway(login).await;
    let second = another_gateway(&app, "gw-2", &login.args(&[])).await;
    (app, second)
}

async fn another_gateway(app: &TestApp, node: &str, args: &[&str]) -> gateway::RunningGateway {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    gateway::spawn(gateway_config(&app.nats, node, &args))
        .await
        .unwrap()
}

#[tokio::test]
async fn another_user_gets_not_found_and_a_bad_token_the_uniform_401() {
    let login = Login::new();
    let app = one_gateway(&login).await;
    let alice = Login::token("alice", 600);
    let bob = Login::token("bob", 600);
    let session = new_session(&app, &alice).await;
    let q = format!("?session={session}");
    let message = MessageId::new();

    // Every endpoint of the session, as bob: the answer to an unknown session.
    let calls: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            format!("/api/chat{q}"),
            Some(json!({"content": "hi"})),
        ),
        ("POST", format!("/api/regenerate{q}"), Some(json!({}))),
        (
            "POST",
            format!("/api/cancel{q}"),
            Some(json!({"message_id": message})),
        ),
        ("GET", format!("/api/history{q}"), None),
        ("GET", format!("/api/events{q}"), None),
        (
            "PATCH",
            format!("/api/sessions/{session}"),
            Some(json!({"title": "mine"})),
        ),
        ("DELETE", format!("/api/sessions/{session}"), None),
    ];
    let call = |method: &str, path: &str, token: &str, body: &Option<Value>| {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = app.http.request(method, app.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send()
    };
    for (method, path, body) in &calls {
        let response = call(method, path, &bob, body).await.unwrap();
        assert_rest_error(response, 404, ErrorCode::NotFound).await;
    }
    // A forged, an expired, a revoked-looking and no token: one 401, one body.
    let forged = {
        let key = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!").unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "alice", "exp": now + 600}),
            &key,
        )
        .unwrap()
    };
    let expired = Login::token_with(json!({"sub": "alice", "exp": 1_000_000}));
    let mut bodies = Vec::new();
    for token in [forged.as_str(), expired.as_str(), "", "not-a-jwt"] {
        for (method, path, body) in
            calls
                .iter()
                .chain([&("GET", "/api/sessions".to_string(), None)])
        {
            let response = call(method, path, token, body).await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path}");
            bodies.push(response.text().await.unwrap());
        }
        let response = create(&app, app.addr, token).await;
        assert_eq!(response.status(), 401);
        bodies.push(response.text().await.unwrap());
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "one answer for every refusal: {bodies:?}");

    // On the socket: bob's auth frame on alice's session, and a forged token.
    for (token, code) in [
        (&bob, ErrorCode::NotFound),
        (&forged, ErrorCode::Unauthorized),
    ] {
        let mut ws = Ws::connect(&app.ws_url(&q)).await;
        ws.send_json(json!({"type": "auth", "token": token})).await;
        ws.expect_error(code).await;
        ws.expect_close(CloseCode::PolicyViolation).await;
    }
    // A socket without a session must authenticate too.
    let mut ws = Ws::connect(&app.ws_url("")).await;
    ws.send_json(json!({"type": "ping"})).await;
    ws.expect_error(ErrorCode::Unauthorized).await;

    // Alice, the owner, is served; bob's list does not show her session.
    for (method, path, body) in &calls[..5] {
        let status = call(method, path, &alice, body).await.unwrap().status();
        assert!(
            status.is_success() || status == 400 || status == 404,
            "{path}: {status}"
        );
    }
    let response = app.get(&format!("/api/history{q}"), &alice).await;
    assert_eq!(response.status(), 200);
    assert_eq!(list(&app, &bob, "").await["sessions"], json!([]));
    let mut ws = socket(app.addr, Some(session), &alice).await;
    ws.ping().await;
    let response = call("DELETE", &format!("/api/sessions/{session}"), &alice, &None)
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    ws.expect_close(CloseCode::PolicyViolation).await;
    assert_eq!(list(&app, &alice, "").await["sessions"], json!([]));
}

#[tokio::test]
async fn the_list_is_the_callers_newest_first_paged_and_live_on_every_device() {
    let login = Login::new();
    let (app, second) = two_gateways(&login).await;
    let alice = Login::token("alice", 600);
    let bob = Login::token("bob", 600);
    // Alice's other device, on the other gateway, follows her list.
    let mut device = socket(second.addr(), None, &alice).await;
    let (change, first_id, _) = list_change(&mut device).await;
    assert_eq!(change, SessionChange::Created);

    let mut created = vec![first_id];
    for _ in 0..4 {
        created.push(new_session(&app, &alice).await);
    }
    new_session(&app, &bob).await;
    for id in &created[1..] {
        assert_eq!(
            list_change(&mut device).await,
            (SessionChange::Created, *id, Some(String::new()))
        );
    }
    // A question moves a session to the top and names it.
    let asked = created[1];
    let response = app
        .post(
            &format!("/api/chat?session={asked}"),
            &alice,
            json!({"content": "  What is\n JetStream?  "}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let started = list_change(&mut device).await;
    assert_eq!(
        started,
        (
            SessionChange::AnswerStarted,
            asked,
            Some("What is JetStream?".to_string())
        )
    );
    let response = app
        .http
        .patch(app.url(&format!("/api/sessions/{}", created[2])))
        .bearer_auth(&alice)
        .json(&json!({"title": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        list_change(&mut device).await,
        (
            SessionChange::Renamed,
            created[2],
            Some("Renamed".to_string())
        )
    );

    // Pages of two, newest activity first, each session once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = list(&app, &alice, &format!("?limit=2{cursor}")).await;
        let sessions = page["sessions"].as_array().unwrap();
        assert!(sessions.len() <= 2);
        seen.extend(sessions.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let ids: Vec<SessionId> = seen
        .iter()
        .map(|s| s["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let mut expected = created.clone();
    assert_eq!(ids.len(), expected.len(), "{seen:?}");
    assert!(expected.iter().all(|id| ids.contains(id)), "{seen:?}");
    // Renamed last, asked before: the two most recent activities.
    assert_eq!(ids[..2], [created[2], asked], "{seen:?}");
    let updated: Vec<u64> = seen
        .iter()
        .map(|s| s["updated"].as_u64().unwrap())
        .collect();
    assert!(updated.windows(2).all(|w| w[0] >= w[1]), "{updated:?}");
    assert_eq!(
        seen[1]["in_flight"],
        json!(true),
        "no worker: still in flight"
    );
    assert_eq!(seen[0]["in_flight"], json!(false));
    assert_eq!(
        list(&app, &bob, "").await["sessions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let bad = app.get("/api/sessions?cursor=nope", &alice).await;
    assert_rest_error(bad, 400, ErrorCode::BadRequest).await;

    // Deleted from one device: gone from the other's list.
    let response = app
        .http
        .delete(app.url(&format!("/api/sessions/{}", created[3])))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        list_change(&mut device).await,
        (SessionChange::Deleted, created[3], None)
    );
    expected.retain(|id| *id != created[3]);
    let mut ids: Vec<SessionId> = list(&app, &alice, "").await["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().parse().unwrap())
        .collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected);
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn quotas_hold_per_user_across_gateways() {
    let login = Login::new();
    let app = TestApp::builder()
        .gateway_args(&login.args(&[
            "--user-sessions-per-minute",
            "2",
            "--user-max-in-flight",
            "2",
        ]))
        .start()
        .await;
    let second = another_gateway(
        &app,
        "gw-2",
        &login.args(&["--user-max-sessions", "3", "--user-max-in-flight", "2"]),
    )
    .await;
    let retry_after = |r: &reqwest::Response| -> u64 {
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };

    // New sessions per minute (first gateway).
    let carol = Login::token("carol", 600);
    for _ in 0..2 {
        assert_eq!(create(&app, app.addr, &carol).await.status(), 201);
    }
    let refused = create(&app, app.addr, &carol).await;
    let wait = retry_after(&refused);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_rest_error(refused, 429, ErrorCode::RateLimited).await;
    // Another user is not limited by carol's creations.
    let dave = Login::token("dave", 600);
    assert_eq!(create(&app, app.addr, &dave).await.status(), 201);

    // Sessions per user (second gateway): carol has 2, a third is allowed,
    // a fourth is not.
    assert_eq!(create(&app, second.addr(), &carol).await.status(), 201);
    let refused = create(&app, second.addr(), &carol).await;
    assert!(retry_after(&refused) >= 1);
    assert_rest_error(refused, 429, ErrorCode::RateLimited).await;

    // Answers in flight per user, across sessions and gateways (no worker:
    // every answer stays in flight).
    let erin = Login::token("erin", 600);
    let sessions = [
        new_session(&app, &erin).await,
        new_session(&app, &erin).await,
        new_session_on(&app, second.addr(), &erin).await,
    ];
    let ask = |gateway: std::net::SocketAddr, session: SessionId| {
        app.http
            .post(format!("http://{gateway}/api/chat?session={session}"))
            .bearer_auth(&erin)
            .json(&json!({"content": "hello"}))
            .send()
    };
    assert_eq!(ask(app.addr, sessions[0]).await.unwrap().status(), 202);
    assert_eq!(ask(second.addr(), sessions[1]).await.unwrap().status(), 202);
    let refused = ask(app.addr, sessions[2]).await.unwrap();
    assert!(retry_after(&refused) >= 1);
    assert_rest_error(refused, 429, ErrorCode::RateLimited).await;
    // Refused for the user, the question does not count in its session.
    let mut ws = socket(second.addr(), Some(sessions[2]), &erin).await;
    ws.send_json(json!({"type": "chat", "content": "again"}))
        .await;
    ws.expect_error(ErrorCode::RateLimited).await;
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_device_streams_cancels_and_regenerates_the_same_session() {
    let login = Login::new();
    let app = TestApp::builder()
        .gateway_args(&login.args(&[]))
        .real_worker_with(&["--demo-tokens-per-sec", "40", "--demo-answer-tokens", "400"])
        .start()
        .await;
    let second = another_gateway(&app, "gw-2", &login.args(&[])).await;
    let alice = Login::token("alice", 600);
    let session = new_session(&app, &alice).await;
    let mut laptop = socket(app.addr, Some(session), &alice).await;
    let mut phone = socket(second.addr(), Some(session), &alice).await;

    // Asked on the laptop, streams on both; stopped from the phone.
    let (id, _) = laptop.chat("a long answer please").await;
    let first_chunk = phone.until_kind(EventKind::Chunk).await;
    assert_eq!(first_chunk[0].event.kind(), EventKind::UserMessage);
    phone.cancel(id).await;
    let on_laptop = laptop.until_terminal(id).await;
    let on_phone = phone.until_terminal(id).await;
    assert_eq!(on_laptop.last().unwrap().event.kind(), EventKind::Cancelled);
    let seqs = |events: &[protocol::frames::SequencedEvent]| -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    };
    let phone_seqs: Vec<u64> = seqs(&first_chunk)
        .into_iter()
        .chain(seqs(&on_phone))
        .collect();
    assert_eq!(
        seqs(&on_laptop),
        phone_seqs,
        "every event once, in order, on both"
    );
    assert_eq!(count(&on_laptop, EventKind::Cancelled), 1);
    // The worker tells the user's devices the answer finished.
    let finished = tokio::time::timeout(WAIT, async {
        loop {
            let (change, id, _) = list_change(&mut phone).await;
            if change == SessionChange::AnswerFinished {
                return id;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(finished, session);

    // Regenerated from the phone: the laptop sees it.
    let (regenerated, _) = phone.regenerate(Some(id)).await;
    let events = laptop.until_kind(EventKind::UserMessage).await;
    assert_eq!(events.last().unwrap().event.message_id(), Some(regenerated));
    laptop.cancel(regenerated).await;
    phone.until_terminal(regenerated).await;
    second.shutdown().await.unwrap();
}

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
