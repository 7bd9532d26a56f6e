//! A scripted OpenAI-compatible server on a loopback port: it answers
//! `POST /v1/chat/completions` with the next scripted response, records
//! every request (body and `Authorization`), and counts its open TCP
//! connections, open response streams and the body bytes it handed over,
//! so tests see a cancel (or a refusal) reach it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use worker::backends::openai::OpenAiArgs;
use worker::backends::{BackendError, ModelOutput, OutputStream};

/// How long a test waits for anything before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Script {
    /// `200 text/event-stream`: the tokens (a keep-alive comment between
    /// them), then a chunk with the finish reason, a usage chunk, `[DONE]`,
    /// each only when set.
    Stream {
        tokens: Vec<String>,
        finish_reason: Option<String>,
        usage: Option<(u32, u32)>,
        done: bool,
        /// Pause before each token.
        pace: Duration,
    },
    /// A token every `pace`, forever, until the client goes away.
    Endless { pace: Duration },
    /// `200 text/event-stream` with keep-alive comments only, forever.
    Silent,
    /// `200 text/event-stream` with exactly these steps: the bytes of the
    /// shapes real servers send (see [`sse`]), pauses, floods.
    Raw(Vec<Step>),
    /// A plain error answer.
    Status {
        status: u16,
        body: String,
        retry_after: Option<String>,
    },
}

/// One step of a [`Script::Raw`] body.
#[derive(Clone, Debug)]
pub enum Step {
    /// These bytes, as they are.
    Send(String),
    Pause(Duration),
    /// `bytes` of `x`, in 64 KiB writes, with no line end: one endless line.
    Flood {
        bytes: usize,
    },
}

/// The bytes real servers send, to build [`Script::Raw`] bodies with.
pub mod sse {
    use serde_json::{json, Value};

    /// `data: {json}` and a blank line.
    pub fn data(value: &Value) -> String {
        format!("data: {value}\n\n")
    }

    /// A chunk whose delta is `delta`.
    pub fn delta(delta: Value) -> String {
        data(&json!({"choices":[{"index":0,"delta":delta,"finish_reason":null}]}))
    }

    pub fn content(text: &str) -> String {
        delta(json!({"content": text}))
    }

    /// vLLM, llama.cpp's server, DeepSeek.
    pub fn reasoning_content(text: &str) -> String {
        delta(json!({"reasoning_content": text, "content": null}))
    }

    /// Ollama, OpenRouter.
    pub fn reasoning(text: &str) -> String {
        delta(json!({"reasoning": text, "content": ""}))
    }

    pub fn finish(reason: &str) -> String {
        data(&json!({"choices":[{"index":0,"delta":{},"finish_reason":reason}]}))
    }

    /// The finish reason and the usage in the same, last chunk (llama.cpp,
    /// Ollama), rather than a usage chunk of its own (OpenAI).
    pub fn finish_with_usage(reason: &str, prompt: u32, completion: u32) -> String {
        data(
            &json!({"choices":[{"index":0,"delta":{},"finish_reason":reason}],
            "usage":{"prompt_tokens":prompt,"completion_tokens":completion}}),
        )
    }

    pub fn done() -> String {
        "data: [DONE]\n\n".into()
    }
}

impl Script {
    /// A complete, well-formed answer.
    pub fn answer(tokens: &[&str]) -> Self {
        Script::Stream {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            finish_reason: Some("stop".into()),
            usage: Some((11, tokens.len() as u32)),
            done: true,
            pace: Duration::ZERO,
        }
    }

    pub fn status(status: u16, body: &str) -> Self {
        Script::Status {
            status,
            body: body.into(),
            retry_after: None,
        }
    }
}

/// What the server was asked.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub body: Value,
    pub authorization: Option<String>,
}

#[derive(Clone)]
struct Shared {
    scripts: Arc<Mutex<VecDeque<Script>>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// Response bodies (streams) not yet dropped by the server.
    streams: watch::Sender<usize>,
    /// Body bytes handed to the HTTP server (not all may have reached the
    /// client: the sockets buffer some).
    sent: Arc<AtomicUsize>,
}

pub struct ScriptedServer {
    pub addr: SocketAddr,
    shared: Shared,
    connections: watch::Sender<usize>,
    accepted: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedServer {
    pub async fn start(scripts: Vec<Script>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared {
            scripts: Arc::new(Mutex::new(scripts.into())),
            requests: Arc::default(),
            streams: watch::Sender::new(0),
            sent: Arc::default(),
        };
        let connections = watch::Sender::new(0);
        let accepted = Arc::new(Mutex::new(0));
        let listener = CountingListener {
            inner: listener,
            open: connections.clone(),
            accepted: accepted.clone(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            shared,
            connections,
            accepted,
            task,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push(&self, script: Script) {
        self.shared.scripts.lock().unwrap().push_back(script);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }

    pub fn open_connections(&self) -> usize {
        *self.connections.borrow()
    }

    pub fn open_streams(&self) -> usize {
        *self.shared.streams.borrow()
    }

    /// Body bytes the server handed over so far, all answers together.
    pub fn bytes_sent(&self) -> usize {
        self.shared.sent.load(Ordering::SeqCst)
    }

    /// Waits until the server has no open connection and no response stream
    /// left; fails the test after `within`.
    pub async fn wait_all_closed(&self, within: Duration) {
        let mut connections = self.connections.subscribe();
        let mut streams = self.shared.streams.subscribe();
        tokio::time::timeout(within, async {
            connections.wait_for(|n| *n == 0).await.unwrap();
            streams.wait_for(|n| *n == 0).await.unwrap();
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "still open after {within:?}: {} connections, {} streams",
                self.open_connections(),
                self.open_streams()
            )
        });
    }

    /// Waits until `n` requests were received.
    pub async fn wait_requests(&self, n: usize) {
        tokio::time::timeout(WAIT, async {
            while self.requests().len() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} requests, expected {n}", self.requests().len()));
    }
}

async fn completions(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    shared.requests.lock().unwrap().push(Recorded {
        body,
        authorization,
    });
    let script = shared.scripts.lock().unwrap().pop_front();
    let Some(script) = script else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no script left").into_response();
    };
    let events: futures::stream::BoxStream<'static, Bytes> = match script {
        Script::Status {
            status,
            body,
            retry_after,
        } => {
            let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
            if let Some(value) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", value.parse().unwrap());
            }
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return response;
        }
        Script::Stream {
            tokens,
            finish_reason,
            usage,
            done,
            pace,
        } => {
            let mut items: Vec<String> = Vec::new();
            for token in tokens {
                items.push(data(&json!({"choices":[{"index":0,"delta":{"content":token},"finish_reason":null}]})));
                items.push(": keep-alive\n\n".into());
            }
            if let Some(reason) = finish_reason {
                items.push(data(
                    &json!({"choices":[{"index":0,"delta":{},"finish_reason":reason}]}),
                ));
            }
            if let Some((prompt, completion)) = usage {
                items.push(data(&json!({"choices":[],"usage":{
                    "prompt_tokens":prompt,"completion_tokens":completion,
                    "total_tokens":prompt+completion}})));
            }
            if done {
                items.push("data: [DONE]\n\n".into());
            }
            futures::stream::iter(items)
                .then(move |item| async move {
                    if !pace.is_zero() && item.starts_with("data") {
                        tokio::time::sleep(pace).await;
                    }
                    Bytes::from(item)
                })
                .boxed()
        }
        Script::Endless { pace } => futures::stream::iter(0u64..)
            .then(move |i| async move {
                tokio::time::sleep(pace).await;
                Bytes::from(data(
                    &json!({"choices":[{"index":0,"delta":{"content":format!("t{i} ")}}]}),
                ))
            })
            .boxed(),
        Script::Silent => futures::stream::repeat(())
            .then(|()| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Bytes::from_static(b": keep-alive\n\n")
            })
            .boxed(),
        Script::Raw(steps) => futures::stream::iter(steps)
            .flat_map(|step| match step {
                Step::Send(text) => futures::stream::iter(vec![Bytes::from(text)]).boxed(),
                Step::Pause(pause) => futures::stream::once(async move {
                    tokio::time::sleep(pause).await;
                    Bytes::new()
                })
                .boxed(),
                Step::Flood { bytes } => {
                    let writes = bytes.div_ceil(FLOOD.len());
                    futures::stream::iter((0..writes).map(move |i| {
                        let size = (bytes - i * FLOOD.len()).min(FLOOD.len());
                        Bytes::from_static(&FLOOD[..size])
                    }))
                    .boxed()
                }
            })
            .filter(|bytes| std::future::ready(!bytes.is_empty()))
            .boxed(),
    };
    let guard = StreamGuard::new(shared.streams.clone());
    let sent = shared.sent.clone();
    let body = events.map(move |item| {
        let _alive = &guard;
        sent.fetch_add(item.len(), Ordering::SeqCst);
        Ok::<_, std::convert::Infallible>(item)
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .unwrap()
}

fn data(value: &Value) -> String {
    sse::data(value)
}

/// What a [`Step::Flood`] sends: `x`, and never a line end.
static FLOOD: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// Counts a response stream as open until the server drops it.
struct StreamGuard(watch::Sender<usize>);

impl StreamGuard {
    fn new(count: watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A TCP listener that counts the connections it accepted and still holds.
struct CountingListener {
    inner: TcpListener,
    open: watch::Sender<usize>,
    accepted: Arc<Mutex<usize>>,
}

impl axum::serve::Listener for CountingListener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        *self.accepted.lock().unwrap() += 1;
        self.open.send_modify(|n| *n += 1);
        (
            TrackedStream {
                inner: stream,
                open: self.open.clone(),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

struct TrackedStream {
    inner: TcpStream,
    open: watch::Sender<usize>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.open.send_modify(|n| *n -= 1);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Backend flags for a test: everything explicit, so the environment of
/// the machine running the tests (an `OPENAI_API_KEY`…) changes nothing.
pub fn args(base_url: &str) -> OpenAiArgs {
    OpenAiArgs {
        base_url: base_url.into(),
        model: "test-model".into(),
        models: vec!["other-model".into()],
        api_key: None,
        api_key_file: None,
        temperature: None,
        max_tokens: None,
        idle_timeout_secs: 30,
        first_token_timeout_secs: 10,
        max_event_bytes: 1 << 20,
        max_answer_bytes: 256 << 10,
        system_prompt: None,
        context_turns: 20,
        context_chars: 24_000,
    }
}

/// Everything a backend stream yields until it ends: the answer's tokens,
/// and the last item (`Finished` or the error). Reasoning is left out; see
/// [`collect_all`].
pub async fn collect(stream: OutputStream) -> (Vec<String>, Result<ModelOutput, BackendError>) {
    let (outputs, last) = collect_all(stream).await;
    let tokens = outputs
        .into_iter()
        .filter_map(|output| match output {
            ModelOutput::Token(token) => Some(token),
            _ => None,
        })
        .collect();
    (tokens, last)
}

/// Everything a backend stream yields until it ends: the tokens and the
/// reasoning in order, and the last item (`Finished` or the error).
pub async fn collect_all(
    mut stream: OutputStream,
) -> (Vec<ModelOutput>, Result<ModelOutput, BackendError>) {
    let mut tokens = Vec::new();
    loop {
        let item = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("the backend stream stalled")
            .expect("the backend stream ended without a last item");
        match item {
            Ok(output @ (ModelOutput::Token(_) | ModelOutput::Reasoning(_))) => tokens.push(output),
            last => {
                assert!(
                    stream.next().await.is_none(),
                    "nothing follows the last item"
                );
                return (tokens, last);
            }
        }
    }
}
