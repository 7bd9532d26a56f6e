//! The app's login as the user tests play it (`GATEWAY_AUTH=jwt`): HS256
//! tokens for any `sub`, gateways that accept them, and the requests and
//! frames those tests make as a user.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use protocol::frames::ControlFrame;
use protocol::users::SessionChange;
use protocol::SessionId;
use serde_json::{json, Value};

use super::{gateway_config, TestApp, Ws};

pub const SECRET: &str = "a-test-secret-of-at-least-32-bytes-for-hs256";

/// The app's login, as the tests play it: HS256 tokens for any `sub`.
pub struct Login {
    _dir: tempfile::TempDir,
    pub secret_file: String,
}

impl Login {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-secret");
        std::fs::write(&path, SECRET).unwrap();
        Self {
            secret_file: path.to_str().unwrap().to_string(),
            _dir: dir,
        }
    }

    pub fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--auth", "jwt", "--jwt-hmac-secret-file", &self.secret_file];
        args.extend_from_slice(extra);
        args
    }

    pub fn token_with(claims: Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    /// A token of `sub` valid for `ttl_secs`.
    pub fn token(sub: &str, ttl_secs: u64) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        Self::token_with(json!({"sub": sub, "exp": now + ttl_secs, "iat": now}))
    }
}

pub async fn create(
    app: &TestApp,
    gateway: std::net::SocketAddr,
    token: &str,
) -> reqwest::Response {
    app.http
        .post(format!("http://{gateway}/api/sessions"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

pub async fn new_session(app: &TestApp, token: &str) -> SessionId {
    new_session_on(app, app.addr, token).await
}

pub async fn new_session_on(
    app: &TestApp,
    gateway: std::net::SocketAddr,
    token: &str,
) -> SessionId {
    let response = create(app, gateway, token).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert!(body.get("token").is_none(), "the JWT opens it: {body}");
    body["session_id"].as_str().unwrap().parse().unwrap()
}

pub async fn list(app: &TestApp, token: &str, query: &str) -> Value {
    let response = app.get(&format!("/api/sessions{query}"), token).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// A socket on `gateway` for `session` (or a new one), `ready` read.
pub async fn socket(gateway: std::net::SocketAddr, session: Option<SessionId>, token: &str) -> Ws {
    let query = session.map_or(String::new(), |s| format!("?session={s}"));
    let mut ws = Ws::connect(&format!("ws://{gateway}/ws/chat{query}")).await;
    ws.send_json(json!({"type": "auth", "token": token})).await;
    ws.ready().await;
    ws
}

/// The next `session_list` frame.
pub async fn list_change(ws: &mut Ws) -> (SessionChange, SessionId, Option<String>) {
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
pub async fn one_gateway(login: &Login) -> TestApp {
    TestApp::builder()
        .gateway_args(&login.args(&[]))
        .start()
        .await
}

/// Two gateways in `jwt` mode on one NATS (a user's devices on different
/// nodes), no worker.
pub async fn two_gateways(login: &Login) -> (TestApp, gateway::RunningGateway) {
    let app = one_gateway(login).await;
    let second = another_gateway(&app, "gw-2", &login.args(&[])).await;
    (app, second)
}

pub async fn another_gateway(app: &TestApp, node: &str, args: &[&str]) -> gateway::RunningGateway {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    gateway::spawn(gateway_config(&app.nats, node, &args))
        .await
        .unwrap()
}
