//! A real nats-server, the gateway and a worker in-process on free ports,
//! and a WebSocket client that reads protocol frames with timeouts.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::time::Duration;

use clap::Parser;
use futures::{SinkExt, StreamExt};
use protocol::frames::{ControlFrame, SequencedEvent, ServerFrame};
use protocol::{Event, MessageId};
use serde_json::{json, Value};
use stack::nats::NatsServer;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

pub const ANSWER_TOKENS: usize = 24;

pub struct TestApp {
    pub nats: NatsServer,
    pub gateway: gateway::RunningGateway,
    pub worker: Option<worker::RunningWorker>,
    pub http: reqwest::Client,
}

pub struct Options {
    pub gateway_args: Vec<String>,
    pub worker_args: Vec<String>,
    pub worker: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gateway_args: vec![],
            worker_args: vec!["--demo-tokens-per-sec".into(), "0".into()],
            worker: true,
        }
    }
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let nats = NatsServer::start().unwrap();
        let mut args: Vec<String> = [
            "gateway",
            "--nats-url",
            &nats.url(),
            "--listen",
            "127.0.0.1:0",
            "--node",
            "gw-test",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(options.gateway_args);
        let gateway = gateway::spawn(gateway::GatewayConfig::parse_from(args))
            .await
            .unwrap();
        let worker = if options.worker {
            let mut args: Vec<String> = [
                "worker",
                "--nats-url",
                &nats.url(),
                "--metrics-listen",
                "127.0.0.1:0",
                "--demo-first-token-ms",
                "0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if !options
                .worker_args
                .iter()
                .any(|a| a == "--demo-answer-tokens")
            {
                args.extend([
                    "--demo-answer-tokens".to_string(),
                    ANSWER_TOKENS.to_string(),
                ]);
            }
            args.extend(options.worker_args);
            Some(
                worker::spawn(worker::WorkerConfig::parse_from(args))
                    .await
                    .unwrap(),
            )
        } else {
            None
        };
        Self {
            nats,
            gateway,
            worker,
            http: reqwest::Client::new(),
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.gateway.addr())
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws/chat{query}", self.gateway.addr())
    }

    pub async fn new_session(&self) -> (String, String) {
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
            body["session_id"].as_str().unwrap().to_string(),
            body["token"].as_str().unwrap().to_string(),
        )
    }

    pub async fn connect(&self, session: &str, token: &str, after_seq: Option<u64>) -> Client {
        let mut query = format!("?session={session}&token={token}");
        if let Some(after) = after_seq {
            query.push_str(&format!("&after_seq={after}"));
        }
        Client::connect(&self.ws_url(&query)).await
    }

    pub async fn events(&self, session: &str, token: &str, after_seq: u64) -> Vec<SequencedEvent> {
        let body: Value = self
            .http
            .get(format!(
                "{}/api/events?session={session}&after_seq={after_seq}",
                self.base()
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| serde_json::from_value(e.clone()).unwrap())
            .collect()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Client {
    pub ws: Ws,
    /// Stream events that arrived while waiting for something else (the
    /// echo of a chat may come before its `accepted`).
    pub buffered: std::collections::VecDeque<SequencedEvent>,
}

#[derive(Debug)]
pub enum Received {
    Frame(ServerFrame),
    Closed(Option<u16>),
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Self {
            ws,
            buffered: Default::default(),
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.ws
            .send(Message::Text(value.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        let _ = self.ws.send(message).await;
    }

    pub async fn recv(&mut self) -> Received {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("no frame within 10 s");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Received::Frame(
                        ServerFrame::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}")),
                    )
                }
                Some(Ok(Message::Close(frame))) => {
                    return Received::Closed(frame.map(|f: CloseFrame| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Received::Closed(None),
            }
        }
    }

    pub async fn frame(&mut self) -> ServerFrame {
        match self.recv().await {
            Received::Frame(frame) => frame,
            Received::Closed(code) => panic!("socket closed ({code:?}) while a frame was expected"),
        }
    }

    pub async fn ready(&mut self) -> ControlFrame {
        match self.frame().await {
            ServerFrame::Control(ready @ ControlFrame::Ready { .. }) => ready,
            other => panic!("expected ready, got {other:?}"),
        }
    }

    /// Sends a chat and returns its message id and the `accepted` seq.
    pub async fn chat(&mut self, content: &str) -> (MessageId, u64) {
        let id = MessageId::new();
        self.send_json(json!({"type": "chat", "message_id": id, "content": content}))
            .await;
        loop {
            match self.frame().await {
                ServerFrame::Control(ControlFrame::Accepted { message_id, seq })
                    if message_id == id =>
                {
                    return (id, seq)
                }
                ServerFrame::Control(ControlFrame::Error { code, message, .. }) => {
                    panic!("chat refused: {code:?} {message}")
                }
                ServerFrame::Event(e) => self.buffered.push_back(e),
                _ => continue,
            }
        }
    }

    /// Collects stream events until `message`'s terminal event.
    pub async fn until_terminal(&mut self, message: MessageId) -> Vec<SequencedEvent> {
        let mut events = Vec::new();
        loop {
            let next = match self.buffered.pop_front() {
                Some(e) => Some(e),
                None => match self.frame().await {
                    ServerFrame::Event(e) => Some(e),
                    _ => None,
                },
            };
            if let Some(e) = next {
                let done = e.event.is_terminal() && e.event.message_id() == Some(message);
                events.push(e);
                if done {
                    return events;
                }
            }
        }
    }
}

/// The text of `message`'s last attempt.
pub fn answer(events: &[SequencedEvent], message: MessageId) -> String {
    let last_attempt = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Chunk {
                message_id,
                attempt,
                ..
            } if *message_id == message => Some(*attempt),
            _ => None,
        })
        .max()
        .unwrap_or(1);
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Chunk {
                message_id,
                attempt,
                text,
                ..
            } if *message_id == message && *attempt == last_attempt => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

pub fn assert_strictly_increasing(events: &[SequencedEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "seq not increasing: {} then {}",
            pair[0].seq,
            pair[1].seq
        );
    }
}
