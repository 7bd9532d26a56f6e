//! The `sse` scenario: the paced load of the WebSocket run again, on the
//! same stack right after it, through the AI SDK's endpoint instead
//! (`POST /api/ui/chat`, the UI message stream over SSE): the same streams
//! asking back to back, token latency (the demo's stamps, model yields →
//! client receives) and CPU per token measured the same way, side by side.
//! Its ledger is exact: every answer's text, as received, equals its stored
//! chunks (stamps removed), and it came in as many deltas as there are
//! stored chunks: every token once, per message.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyDataStream, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;
use worker::backends::demo::{strip_stamps, STAMP_CLOSE, STAMP_OPEN};

use super::load::LoadSpec;
use super::socket::{Endpoint, FRAME_TIMEOUT};
use super::stats::{now_us, Samples};
use super::token_trace::{TokenTrace, TracedToken};
use super::window::{Window, WindowCost};

/// What the SSE run measured.
#[derive(Debug, Default)]
pub struct SseOutcome {
    pub token_latency: Samples,
    /// The part of `token_latency` carried by each answer's first delta.
    pub first_chunk_token_latency: Samples,
    /// Every measured token, when the spec asked for them.
    pub token_trace: TokenTrace,
    pub tokens_per_sec: f64,
    pub measured_tokens: u64,
    /// The measured window's CPU and waits.
    pub cost: WindowCost,
    pub answers: Vec<Answer>,
    /// Connections the sessions opened: one each while the server keeps
    /// them alive from answer to answer.
    pub connections_opened: u64,
    pub problems: Vec<String>,
}

/// One answer as received, for the ledger.
#[derive(Debug)]
pub struct Answer {
    session: String,
    token: String,
    message_id: String,
    text: String,
    deltas: usize,
}

#[derive(Default)]
struct Shared {
    tokens: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
}

/// A UI chunk as the client reads it: borrowed from the body where the
/// JSON allows (a delta with escapes is unescaped into its own string).
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, rename = "messageId")]
    message_id: Option<String>,
    #[serde(default, borrow)]
    delta: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct NewSession {
    session_id: String,
    token: String,
}

/// Runs `spec`'s sessions through `POST /api/ui/chat`.
pub async fn run(endpoint: &Endpoint, spec: &LoadSpec) -> anyhow::Result<SseOutcome> {
    // Only to create the sessions: each asks over its own connection.
    let client = reqwest::Client::new();
    let base = endpoint.http().to_string();
    let sessions: Vec<NewSession> = futures::stream::iter(0..spec.sessions)
        .map(|_| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let res = client.post(format!("{base}/api/sessions")).send().await?;
                anyhow::Ok(res.error_for_status()?.json::<NewSession>().await?)
            }
        })
        .buffer_unordered(spec.connect_concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()
        .context("creating the SSE run's sessions")?;
    let shared = Arc::new(Shared::default());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, session) in sessions.into_iter().enumerate() {
        let (authority, shared) = (endpoint.authority().to_string(), shared.clone());
        let (max_turns, trace_tokens) = (spec.max_turns, spec.trace_tokens);
        let first_question = spec.stagger.first_question(i, spec.sessions);
        tasks.spawn(async move {
            tokio::time::sleep(first_question).await;
            let latency = TokenLatency::new(trace_tokens);
            session_loop(authority, session, i, shared, max_turns, latency).await
        });
    }
    tokio::time::sleep(spec.stagger.span + spec.warmup).await;
    let window = Window::open(&spec.worker_metrics).await;
    let k0 = shared.tokens.load(Ordering::Relaxed);
    let started = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(spec.measure).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let k1 = shared.tokens.load(Ordering::Relaxed);
    let cost = window.close(&spec.worker_metrics).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut outcome = SseOutcome {
        tokens_per_sec: (k1 - k0) as f64 / elapsed,
        measured_tokens: k1 - k0,
        cost,
        ..Default::default()
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((latency, answers, opened, problems)) => {
                outcome.connections_opened += opened;
                outcome.token_latency.extend(latency.all);
                outcome
                    .first_chunk_token_latency
                    .extend(latency.first_chunk);
                outcome.token_trace.extend(latency.trace);
                outcome.answers.extend(answers);
                outcome.problems.extend(problems);
            }
            Err(e) => outcome
                .problems
                .push(format!("an SSE session task failed: {e}")),
        }
    }
    Ok(outcome)
}

/// A session's token latencies: all of them, and those of each answer's
/// first delta again.
struct TokenLatency {
    all: Samples,
    first_chunk: Samples,
    trace: TokenTrace,
}

impl TokenLatency {
    fn new(trace_tokens: bool) -> Self {
        Self {
            all: Samples::default(),
            first_chunk: Samples::default(),
            trace: TokenTrace::new(trace_tokens),
        }
    }
}

/// Latencies, answers, connections opened, problems.
type SessionResult = (TokenLatency, Vec<Answer>, u64, Vec<String>);

/// hyper's side of an HTTP/1.1 connection: what reads and writes it.
type Connection = Pin<Box<http1::Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

/// A session's HTTP/1.1 connection, hyper's client driven by the
/// session's own task (see [`drive`]), kept open from turn to turn as a
/// browser keeps its connection.
struct Link {
    sender: http1::SendRequest<Full<Bytes>>,
    /// `None` once it ended (the server closed it).
    connection: Option<Connection>,
}

impl Link {
    async fn open(authority: &str) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
        Ok(Self {
            sender,
            connection: Some(Box::pin(connection)),
        })
    }

    /// Still open, and ready for the next request.
    async fn ready(&mut self) -> bool {
        if self.connection.is_none() {
            return false;
        }
        let Self { sender, connection } = self;
        drive(connection, sender.ready()).await.is_ok() && connection.is_some()
    }
}

/// Runs `f` while driving the connection in the same task: bytes read off
/// the socket reach `f`'s body in the same poll, as the WebSocket side's
/// frames reach its session's task (a connection task of its own, as
/// reqwest spawns, would put one more task wake-up on every chunk's way).
async fn drive<F: Future>(connection: &mut Option<Connection>, f: F) -> F::Output {
    tokio::pin!(f);
    loop {
        let Some(open) = connection.as_mut() else {
            return f.await;
        };
        tokio::select! {
            biased;
            _ = open.as_mut() => *connection = None,
            out = &mut f => return out,
        }
    }
}

async fn session_loop(
    authority: String,
    session: NewSession,
    index: usize,
    shared: Arc<Shared>,
    max_turns: Option<usize>,
    mut latency: TokenLatency,
) -> SessionResult {
    let mut answers = Vec::new();
    let mut problems = Vec::new();
    let mut turns = 0;
    let mut link: Option<Link> = None;
    let mut opened = 0;
    while !shared.stop.load(Ordering::Relaxed) && max_turns.is_none_or(|m| turns < m) {
        let prompt = format!("bench session {index} turn {turns}: how does a replay window work?");
        let reuse = match link.as_mut() {
            Some(open) => open.ready().await,
            None => false,
        };
        if !reuse {
            match Link::open(&authority).await {
                Ok(new) => {
                    link = Some(new);
                    opened += 1;
                }
                Err(e) => {
                    problems.push(format!("SSE session {}: {e:#}", session.session_id));
                    break;
                }
            }
        }
        let Some(open) = link.as_mut() else { break };
        let Link { sender, connection } = open;
        let asked = turn(sender, &authority, &session, &prompt, &shared, &mut latency);
        match drive(connection, asked).await {
            Ok(answer) => answers.push(answer),
            Err(e) => {
                problems.push(format!("SSE session {}: {e:#}", session.session_id));
                break;
            }
        }
        turns += 1;
    }
    (latency, answers, opened, problems)
}

/// One question and its whole answer over one SSE response.
async fn turn(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    authority: &str,
    session: &NewSession,
    prompt: &str,
    shared: &Shared,
    latency: &mut TokenLatency,
) -> anyhow::Result<Answer> {
    let body = json!({
        "id": session.session_id,
        "trigger": "submit-message",
        "messages": [{"id": "q", "role": "user", "parts": [{"type": "text", "text": prompt}]}],
    });
    let request = hyper::Request::post("/api/ui/chat")
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", session.token),
        )
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let res = sender.send_request(request).await?;
    anyhow::ensure!(
        res.status().is_success(),
        "POST /api/ui/chat answered {}",
        res.status()
    );
    let mut body = BodyDataStream::new(res.into_body());
    let mut buffer = String::new();
    let mut answer = Answer {
        session: session.session_id.clone(),
        token: session.token.clone(),
        message_id: String::new(),
        text: String::new(),
        deltas: 0,
    };
    let mut carry = String::new();
    loop {
        let bytes = tokio::time::timeout(FRAME_TIMEOUT, body.next())
            .await
            .context("no SSE event in time")?
            .context("the SSE response ended before [DONE]")??;
        buffer.push_str(std::str::from_utf8(&bytes).context("SSE body not UTF-8")?);
        let received_us = now_us();
        // The whole events read so far, taken off the buffer once after
        // (not copied out event by event).
        let whole = buffer.rfind("\n\n").map_or(0, |end| end + 2);
        for block in buffer[..whole].split_terminator("\n\n") {
            for data in block.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    anyhow::ensure!(carry.is_empty(), "a stamp was cut at the end");
                    read_to_end(&mut body).await?;
                    return Ok(answer);
                }
                let chunk: Chunk<'_> = serde_json::from_str(data)?;
                match chunk.kind.as_ref() {
                    "start" => answer.message_id = chunk.message_id.unwrap_or_default(),
                    "text-delta" => {
                        answer.deltas += 1;
                        let stamps = unstamp(
                            &mut carry,
                            chunk.delta.as_deref().unwrap_or_default(),
                            &mut answer.text,
                        );
                        shared
                            .tokens
                            .fetch_add(stamps.len() as u64, Ordering::Relaxed);
                        if shared.measuring.load(Ordering::Relaxed) {
                            for yielded in stamps {
                                let waited = received_us.saturating_sub(yielded);
                                latency.all.push_micros(waited);
                                if answer.deltas == 1 {
                                    latency.first_chunk.push_micros(waited);
                                }
                                latency.trace.push(TracedToken {
                                    received_us,
                                    latency_us: waited,
                                    chunk: u32::try_from(answer.deltas - 1).unwrap_or(u32::MAX),
                                });
                            }
                        }
                    }
                    "reset-step" => anyhow::bail!("an answer restarted (a worker lost its job)"),
                    "error" | "abort" => anyhow::bail!("the answer ended with {data}"),
                    _ => {}
                }
            }
        }
        buffer.drain(..whole);
    }
}

/// Reads a response past its `[DONE]` to the body's end, as the SDK's
/// reader does: a response dropped before its last chunk (the chunked
/// body's terminator) cannot be reused, so its connection would be closed
/// and the next question would open a new one, here and between Nginx and
/// the gateway.
async fn read_to_end<S, B, E>(body: &mut S) -> anyhow::Result<()>
where
    S: futures::Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::error::Error + Send + Sync + 'static,
{
    while let Some(rest) = tokio::time::timeout(FRAME_TIMEOUT, body.next())
        .await
        .context("the SSE response did not end after [DONE]")?
    {
        anyhow::ensure!(
            rest?.as_ref().iter().all(u8::is_ascii_whitespace),
            "data after [DONE]"
        );
    }
    Ok(())
}

/// Takes the demo's stamps off a delta (a stamp cut in two waits for the
/// next delta) and appends the plain text; returns the tokens' times.
fn unstamp(carry: &mut String, delta: &str, plain: &mut String) -> Vec<u64> {
    let mut joined = std::mem::take(carry);
    joined.push_str(delta);
    if let Some(open) = joined.rfind(STAMP_OPEN) {
        if !joined[open..].contains(STAMP_CLOSE) {
            *carry = joined.split_off(open);
        }
    }
    strip_stamps(&joined, plain)
}

/// The ledger: up to `max` answers compared with their stored chunks.
pub async fn verify(endpoint: &Endpoint, answers: &[Answer], max: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut problems = Vec::new();
    for answer in answers.iter().take(max) {
        if let Err(e) = verify_one(&client, endpoint.http(), answer).await {
            problems.push(format!(
                "SSE answer {} of session {}: {e:#}",
                answer.message_id, answer.session
            ));
        }
    }
    problems
}

async fn verify_one(client: &reqwest::Client, base: &str, answer: &Answer) -> anyhow::Result<()> {
    #[derive(Deserialize)]
    struct Page {
        events: Vec<serde_json::Value>,
        last_seq: u64,
    }
    let mut after = 0;
    let mut chunks: Vec<(u64, String)> = Vec::new();
    let mut ended = false;
    loop {
        let page: Page = client
            .get(format!(
                "{base}/api/events?session={}&after_seq={after}",
                answer.session
            ))
            .bearer_auth(&answer.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for event in &page.events {
            if event["message_id"] != answer.message_id.as_str() {
                continue;
            }
            match event["type"].as_str() {
                Some("chunk") => chunks.push((
                    event["index"].as_u64().unwrap_or(u64::MAX),
                    event["text"].as_str().unwrap_or_default().to_string(),
                )),
                Some("done") => ended = true,
                _ => {}
            }
        }
        if page.events.len() < 1_000 {
            break;
        }
        after = page.last_seq;
    }
    anyhow::ensure!(ended, "no stored done");
    chunks.sort_by_key(|(index, _)| *index);
    let mut stored = String::new();
    strip_stamps(
        &chunks.iter().map(|(_, t)| t.as_str()).collect::<String>(),
        &mut stored,
    );
    anyhow::ensure!(
        answer.deltas == chunks.len(),
        "{} text deltas for {} stored chunks",
        answer.deltas,
        chunks.len()
    );
    anyhow::ensure!(
        answer.text == stored,
        "the text received differs from the stored answer"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// One answer in chunked SSE, as the gateway writes it: the events with
    /// `[DONE]`, and the chunked body's terminator a moment later.
    const ANSWER: &str = "data: {\"type\":\"start\",\"messageId\":\"m1\"}\n\n\
                          data: {\"type\":\"text-delta\",\"id\":\"t\",\"delta\":\"hi \"}\n\n\
                          data: [DONE]\n\n";

    /// Answers every request on a connection with [`ANSWER`]; counts the
    /// connections it accepted.
    async fn serve(listener: TcpListener, accepted: Arc<AtomicUsize>) {
        while let Ok((socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(answer_each_request(socket));
        }
    }

    async fn answer_each_request(mut socket: TcpStream) {
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // A request's head and its small JSON body (its length read
            // from the head).
            let Some(head_end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if request.len() < head_end + 4 + length {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
                continue;
            }
            request.drain(..head_end + 4 + length);
            let events = format!("{:x}\r\n{ANSWER}\r\n", ANSWER.len());
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            if socket
                .write_all(format!("{head}{events}").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if socket.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
        }
    }

    #[tokio::test]
    async fn a_read_to_its_end_keeps_the_connection_for_the_next_question() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        tokio::spawn(serve(listener, accepted.clone()));
        let session = NewSession {
            session_id: "s".into(),
            token: "t".into(),
        };
        let shared = Arc::new(Shared::default());
        let latency = TokenLatency::new(false);
        let (_, answers, opened, problems) =
            session_loop(authority, session, 0, shared, Some(3), latency).await;
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(answers.len(), 3);
        for answer in &answers {
            assert_eq!(
                (answer.message_id.as_str(), answer.text.as_str()),
                ("m1", "hi ")
            );
            assert_eq!(answer.deltas, 1);
        }
        // A body dropped at `[DONE]`, before its terminator, would have
        // closed each connection: three questions, three connections.
        assert_eq!(opened, 1);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_opened_again_for_the_next_question() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        // One answer per connection, then the server closes it.
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let events = format!("{:x}\r\n{ANSWER}\r\n0\r\n\r\n", ANSWER.len());
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                                connection: close\r\ntransfer-encoding: chunked\r\n\r\n";
                    let _ = socket.write_all(format!("{head}{events}").as_bytes()).await;
                });
            }
        });
        let session = NewSession {
            session_id: "s".into(),
            token: "t".into(),
        };
        let shared = Arc::new(Shared::default());
        let (_, answers, opened, problems) = session_loop(
            authority,
            session,
            0,
            shared,
            Some(2),
            TokenLatency::new(false),
        )
        .await;
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(answers.len(), 2);
        assert_eq!(opened, 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn anything_but_the_end_after_done_is_an_error() {
        let ends = |parts: Vec<&'static str>| {
            futures::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>))
        };
        assert!(read_to_end(&mut ends(vec![])).await.is_ok());
        assert!(read_to_end(&mut ends(vec!["\n", ""])).await.is_ok());
        let extra = read_to_end(&mut ends(vec!["data: {}\n\n"])).await;
        assert!(extra.is_err(), "{extra:?}");
    }
}
