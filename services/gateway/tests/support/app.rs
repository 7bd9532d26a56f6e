//! [`TestApp`]: nats-server, the gateway and, if asked, a worker, with the
//! REST calls the tests make.

use std::net::SocketAddr;

use async_nats::jetstream;
use clap::Parser;
use protocol::access::Role;
use protocol::frames::SequencedEvent;
use protocol::{subjects, SessionId};
use serde_json::{json, Value};
use stack::nats::NatsServer;

use super::scripted_worker::{Script, ScriptedWorker};
use super::ws::Ws;

/// Tokens in the real (demo) worker's answer unless a test asks otherwise.
pub const ANSWER_TOKENS: usize = 24;

/// Who plays the worker.
enum WorkerChoice {
    /// Nobody: accepted jobs stay queued, their messages in flight.
    None,
    Scripted(Script),
    /// The real worker with its demo backend; flags on top of the defaults.
    Real(Vec<String>),
}

enum RunningWorker {
    Scripted(ScriptedWorker),
    Real(Box<worker::RunningWorker>),
}

pub struct TestApp {
    pub nats: NatsServer,
    gateway: Option<gateway::RunningGateway>,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    worker: Option<RunningWorker>,
    /// The layout flags the gateways and the worker got (and the layout
    /// was applied with): another gateway gets them too.
    layout_args: Vec<String>,
}

#[must_use]
pub struct TestAppBuilder {
    gateway_args: Vec<String>,
    layout_args: Vec<String>,
    worker: WorkerChoice,
}

impl TestAppBuilder {
    /// Gateway flags (the process contract, stable across refactors).
    pub fn gateway_args(mut self, args: &[&str]) -> Self {
        self.gateway_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Stream and queue layout flags, given to the gateway and the worker alike.
    pub fn layout_args(mut self, args: &[&str]) -> Self {
        self.layout_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn scripted_worker(mut self, script: Script) -> Self {
        self.worker = WorkerChoice::Scripted(script);
        self
    }

    /// The real worker, answering at once with [`ANSWER_TOKENS`] tokens.
    pub fn real_worker(self) -> Self {
        self.real_worker_with(&[])
    }

    /// The real worker with flags that override its test defaults.
    pub fn real_worker_with(mut self, args: &[&str]) -> Self {
        self.worker = WorkerChoice::Real(args.iter().map(|a| a.to_string()).collect());
        self
    }

    pub async fn start(self) -> TestApp {
        let nats = NatsServer::start().unwrap();
        let mut args = self.gateway_args;
        args.extend(self.layout_args.iter().cloned());
        let config = gateway_config(&nats, "gw-test", &args);
        // Operations' step (`chatctl layout apply`): the gateway only verifies.
        let js = jetstream::new(nats.connect_as(Role::Ops).await.unwrap());
        protocol::setup::ensure(&js, &config.layout).await.unwrap();
        let gateway = gateway::spawn(config).await.unwrap();
        let mut app = TestApp {
            addr: gateway.addr(),
            gateway: Some(gateway),
            nats,
            http: reqwest::Client::new(),
            worker: None,
            layout_args: self.layout_args.clone(),
        };
        app.worker = match self.worker {
            WorkerChoice::None => None,
            WorkerChoice::Scripted(script) => {
                Some(RunningWorker::Scripted(app.scripted_worker(script).await))
            }
            WorkerChoice::Real(extra) => {
                let defaults = [
                    ("--demo-tokens-per-sec", "0".to_string()),
                    ("--demo-first-token-ms", "0".to_string()),
                    ("--demo-answer-tokens", ANSWER_TOKENS.to_string()),
                    ("--metrics-listen", "127.0.0.1:0".to_string()),
                ];
                let mut args = vec!["worker".to_string(), "--nats-url".into(), app.nats.url()];
                args.extend(app.nats.access(Role::Worker).to_args());
                for (flag, value) in defaults {
                    if !extra.iter().any(|a| a == flag) {
                        args.extend([flag.to_string(), value]);
                    }
                }
                args.extend(extra);
                args.extend(self.layout_args);
                let config = worker::WorkerConfig::parse_from(args);
                Some(RunningWorker::Real(Box::new(
                    worker::spawn(config).await.unwrap(),
                )))
            }
        };
        app
    }
}

/// The one place the tests build a gateway's configuration.
/// It connects with the gateway role's credentials, as a deployed one does.
pub fn gateway_config(nats: &NatsServer, node: &str, extra: &[String]) -> gateway::GatewayConfig {
    let url = nats.url();
    let access = nats.access(Role::Gateway).to_args();
    let mut args = vec![
        "gateway",
        "--nats-url",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--node",
        node,
    ];
    args.extend(access.iter().map(String::as_str));
    args.extend(extra.iter().map(String::as_str));
    gateway::GatewayConfig::parse_from(args)
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            gateway_args: Vec::new(),
            layout_args: Vec::new(),
            worker: WorkerChoice::None,
        }
    }

    /// nats-server and a gateway with default flags, no worker.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// A scripted worker started now (e.g. once a test has filled the queue).
    pub async fn scripted_worker(&self, script: Script) -> ScriptedWorker {
        ScriptedWorker::start(self.js().await, script).await
    }

    /// Another gateway on the same NATS, as behind a load balancer (with
    /// the same layout flags, so it verifies the layout the first one did).
    pub async fn another_gateway(&self, node: &str) -> gateway::RunningGateway {
        let config = gateway_config(&self.nats, node, &self.layout_args);
        gateway::spawn(config).await.unwrap()
    }

    /// Shuts the gateway down gracefully; the test's sockets see it happen.
    pub async fn shutdown_gateway(&mut self) {
        let gateway = self.gateway.take().expect("the gateway is running");
        tokio::time::timeout(super::WAIT, gateway.shutdown())
            .await
            .expect("shutdown within the grace period")
            .unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws/chat{query}", self.addr)
    }

    pub async fn js(&self) -> jetstream::Context {
        jetstream::new(self.nats.connect().await.unwrap())
    }

    /// `POST /api/sessions`: a new session and its token.
    pub async fn new_session(&self) -> (SessionId, String) {
        let response = self
            .http
            .post(self.url("/api/sessions"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        (
            body["session_id"].as_str().unwrap().parse().unwrap(),
            body["token"].as_str().unwrap().to_string(),
        )
    }

    /// A new session and a socket attached to it (`ready` read).
    pub async fn attach(&self) -> (SessionId, String, Ws) {
        let (session, token) = self.new_session().await;
        let mut ws = self.connect(session, &token, None).await;
        ws.ready().await;
        (session, token, ws)
    }

    /// A socket on an existing session, `ready` not yet read.
    pub async fn connect(&self, session: SessionId, token: &str, after_seq: Option<u64>) -> Ws {
        let mut query = format!("?session={session}");
        if let Some(after) = after_seq {
            query.push_str(&format!("&after_seq={after}"));
        }
        let mut ws = Ws::connect(&self.ws_url(&query)).await;
        ws.send_json(serde_json::json!({"type": "auth", "token": token}))
            .await;
        ws
    }

    /// `POST {path}` with the session's bearer token and a JSON body.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        let request = self.http.post(self.url(path)).bearer_auth(token);
        request.json(&body).send().await.unwrap()
    }

    /// `GET {path}` with the session's bearer token.
    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        let request = self.http.get(self.url(path)).bearer_auth(token);
        request.send().await.unwrap()
    }

    /// `GET /api/history`: the session's finished turns.
    pub async fn history(&self, session: SessionId, token: &str) -> Vec<protocol::records::Turn> {
        let path = format!("/api/history?session={session}");
        let body: Value = self.get(&path, token).await.json().await.unwrap();
        serde_json::from_value(body["turns"].clone()).unwrap()
    }

    /// `GET /api/events`: the stored events after `after_seq`, and `last_seq`.
    pub async fn events(
        &self,
        session: SessionId,
        token: &str,
        after_seq: u64,
    ) -> (Vec<SequencedEvent>, u64) {
        let path = format!("/api/events?session={session}&after_seq={after_seq}");
        let response = self.get(&path, token).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let events = serde_json::from_value(body["events"].clone()).unwrap();
        (events, body["last_seq"].as_u64().unwrap())
    }

    /// Every stored event of the session, `GET /api/events` page after page.
    pub async fn all_events(&self, session: SessionId, token: &str) -> Vec<SequencedEvent> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (page, last_seq) = self.events(session, token, after).await;
            if page.is_empty() {
                return all;
            }
            after = last_seq;
            all.extend(page);
        }
    }

    /// The sum of a metric over all its label sets, from `/metrics`. Metrics
    /// are per process and tests run side by side: compare before and after.
    pub async fn metric(&self, name: &str) -> f64 {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        let text = response.text().await.unwrap();
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Jobs waiting in the work-queue.
    pub async fn queued_jobs(&self) -> u64 {
        let js = self.js().await;
        let stream = js.get_stream(subjects::REQUESTS_STREAM).await.unwrap();
        stream.get_info().await.unwrap().state.messages
    }
}
