//! Test support: a real nats-server and the gateway in-process on free
//! ports, a WebSocket client that reads protocol frames with timeouts, and a
//! scripted worker that plays the worker's part through real JetStream.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use protocol::frames::{ControlFrame, SequencedEvent, ServerFrame};
use protocol::{subjects, ChatRequest, ErrorCode, Event, FinishReason, MessageId, SessionId};
use serde_json::{json, Value};
use stack::nats::NatsServer;
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for any one thing before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

pub struct TestApp {
    pub nats: NatsServer,
    pub gateway: Option<gateway::RunningGateway>,
    pub addr: std::net::SocketAddr,
    pub http: reqwest::Client,
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts nats-server and a gateway with extra flags.
    pub async fn start_with(extra: &[&str]) -> Self {
        let nats = NatsServer::start().unwrap();
        let url = nats.url();
        let mut args = vec![
            "gateway",
            "--nats-url",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--node",
            "gw-test",
        ];
        args.extend_from_slice(extra);
        let gateway = gateway::spawn(gateway::GatewayConfig::parse_from(args))
            .await
            .unwrap();
        let addr = gateway.addr();
        Self {
            nats,
            gateway: Some(gateway),
            addr,
            http: reqwest::Client::new(),
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws/chat{query}", self.addr)
    }

    pub async fn js(&self) -> jetstream::Context {
        jetstream::new(self.nats.connect().await.unwrap())
    }

    pub async fn new_session(&self) -> (SessionId, String) {
        let response = self
            .http
            .post(format!("{}/api/sessions", self.base()))
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

    pub async fn connect(&self, session: SessionId, token: &str, after_seq: Option<u64>) -> Ws {
        let mut query = format!("?session={session}&token={token}");
        if let Some(after) = after_seq {
            query.push_str(&format!("&after_seq={after}"));
        }
        Ws::connect(&self.ws_url(&query)).await
    }

    /// `GET /api/events`: the stored events after `after_seq`, and `last_seq`.
    pub async fn events(
        &self,
        session: SessionId,
        token: &str,
        after_seq: u64,
    ) -> (Vec<SequencedEvent>, u64) {
        let response = self
            .http
            .get(format!(
                "{}/api/events?session={session}&after_seq={after_seq}",
                self.base()
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let events = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| serde_json::from_value(e.clone()).unwrap())
            .collect();
        (events, body["last_seq"].as_u64().unwrap())
    }

    /// The sum of a metric over all its label sets, from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
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

/// Waits until `check` holds, polling; fails the test after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client that reads [`ServerFrame`]s with timeouts.
pub struct Ws {
    pub ws: Stream,
}

#[derive(Debug)]
pub enum Received {
    Frame(ServerFrame),
    /// The close code, or `None` when the connection ended without one.
    Closed(Option<u16>),
}

impl Ws {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Self { ws }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send(Message::Text(value.to_string().into())).await;
    }

    pub async fn send(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    pub async fn recv(&mut self) -> Received {
        self.recv_within(WAIT)
            .await
            .expect("no frame within the time limit")
    }

    /// The next frame, or `None` if nothing came within `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Received> {
        loop {
            let next = tokio::time::timeout(limit, self.ws.next()).await.ok()?;
            return Some(match next {
                Some(Ok(Message::Text(text))) => Received::Frame(
                    ServerFrame::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}")),
                ),
                Some(Ok(Message::Close(frame))) => {
                    Received::Closed(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Received::Closed(None),
            });
        }
    }

    pub async fn frame(&mut self) -> ServerFrame {
        match self.recv().await {
            Received::Frame(frame) => frame,
            Received::Closed(code) => panic!("socket closed ({code:?}) while a frame was expected"),
        }
    }

    /// Expects `ready`: (session, token, node, last_seq).
    pub async fn ready(&mut self) -> (SessionId, Option<String>, String, u64) {
        match self.frame().await {
            ServerFrame::Control(ControlFrame::Ready {
                session_id,
                token,
                node,
                last_seq,
            }) => (session_id, token, node, last_seq),
            other => panic!("expected ready, got {other:?}"),
        }
    }

    /// The next control frame; stream events before it are returned too.
    pub async fn control(&mut self) -> (ControlFrame, Vec<SequencedEvent>) {
        let mut events = Vec::new();
        loop {
            match self.frame().await {
                ServerFrame::Control(c) => return (c, events),
                ServerFrame::Event(e) => events.push(e),
            }
        }
    }

    /// Expects an `error` frame with `code` (stream events before it are skipped).
    pub async fn expect_error(&mut self, code: ErrorCode) -> String {
        match self.control().await.0 {
            ControlFrame::Error {
                code: got, message, ..
            } => {
                assert_eq!(got, code, "error message: {message}");
                message
            }
            other => panic!("expected error {code:?}, got {other:?}"),
        }
    }

    /// Reads until the socket closes; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            if let Received::Closed(code) = self.recv().await {
                return code;
            }
        }
    }

    pub async fn ping(&mut self) {
        self.send_json(json!({"type": "ping"})).await;
        match self.control().await.0 {
            ControlFrame::Pong => {}
            other => panic!("expected pong, got {other:?}"),
        }
    }

    /// Sends a chat; returns its id, the `accepted` seq and any events that
    /// arrived before `accepted` (the echo may come first).
    pub async fn chat(&mut self, content: &str) -> (MessageId, u64, Vec<SequencedEvent>) {
        let id = MessageId::new();
        self.send_json(json!({"type": "chat", "message_id": id, "content": content}))
            .await;
        match self.control().await {
            (ControlFrame::Accepted { message_id, seq }, early) => {
                assert_eq!(message_id, id);
                (id, seq, early)
            }
            (other, _) => panic!("chat not accepted: {other:?}"),
        }
    }

    /// Stream events until `message`'s terminal event (inclusive).
    pub async fn until_terminal(
        &mut self,
        message: MessageId,
        mut events: Vec<SequencedEvent>,
    ) -> Vec<SequencedEvent> {
        loop {
            if events
                .last()
                .is_some_and(|e| e.event.is_terminal() && e.event.message_id() == Some(message))
            {
                return events;
            }
            if let ServerFrame::Event(e) = self.frame().await {
                events.push(e);
            }
        }
    }
}

/// The text of `message`'s chunks, in order.
pub fn answer(events: &[SequencedEvent], message: MessageId) -> String {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Chunk {
                message_id, text, ..
            } if *message_id == message => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

pub fn assert_strictly_increasing(events: &[SequencedEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "seq not strictly increasing: {} then {}",
            pair[0].seq,
            pair[1].seq
        );
    }
}

/// What the scripted worker streams for every job.
#[derive(Clone)]
pub struct Script {
    pub chunks: Vec<String>,
    /// Pause after each chunk (a slow model).
    pub delay: Duration,
}

impl Script {
    pub fn words(words: &[&str]) -> Self {
        Self {
            chunks: words.iter().map(|w| w.to_string()).collect(),
            delay: Duration::ZERO,
        }
    }

    pub fn text(&self) -> String {
        self.chunks.concat()
    }
}

/// Plays the worker: pulls jobs from the `workers` consumer, publishes the
/// script's chunks and a `done` to the session's events subject, finishes the
/// message in the session record, acks.
pub struct ScriptedWorker {
    task: tokio::task::JoinHandle<()>,
    pub jobs: Arc<AtomicUsize>,
}

impl ScriptedWorker {
    pub async fn start(app: &TestApp, script: Script) -> Self {
        let js = app.js().await;
        let stream = js.get_stream(subjects::REQUESTS_STREAM).await.unwrap();
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_consumer(subjects::WORKERS_CONSUMER)
            .await
            .unwrap();
        let sessions = js.get_key_value(subjects::SESSIONS_BUCKET).await.unwrap();
        let jobs = Arc::new(AtomicUsize::new(0));
        let counter = jobs.clone();
        let task = tokio::spawn(async move {
            let mut messages = consumer.messages().await.unwrap();
            while let Some(Ok(job)) = messages.next().await {
                let request: ChatRequest = serde_json::from_slice(&job.payload).unwrap();
                let subject = subjects::events(request.session_id);
                let id = request.message_id;
                for (index, text) in script.chunks.iter().enumerate() {
                    let chunk = Event::Chunk {
                        message_id: id,
                        attempt: 1,
                        index: index as u32,
                        text: text.clone(),
                        published_at_us: None,
                    };
                    js.publish(subject.clone(), chunk.to_payload())
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                    if !script.delay.is_zero() {
                        tokio::time::sleep(script.delay).await;
                    }
                }
                let done = Event::Done {
                    message_id: id,
                    attempt: 1,
                    finish_reason: FinishReason::Stop,
                    usage: None,
                };
                js.publish(subject, done.to_payload())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                protocol::sessions::update(&sessions, request.session_id, |record| {
                    Ok::<_, std::convert::Infallible>(record.finish(id))
                })
                .await
                .unwrap()
                .unwrap();
                job.ack().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        Self { task, jobs }
    }
}

impl Drop for ScriptedWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
