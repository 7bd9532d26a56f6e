//! The `sse` scenario: the paced load of the WebSocket run again, on the
//! same stack right after it, through the AI SDK's endpoint instead
//! (`POST /api/ui/chat`, the UI message stream over SSE): the same streams
//! asking back to back, token latency (the demo's stamps, model yields →
//! client receives) and CPU per token measured the same way, side by side.
//! Its ledger is exact: every answer's text, as received, equals its stored
//! chunks (stamps removed), and it came in as many deltas as there are
//! stored chunks: every token once, per message.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use worker::backends::demo::{strip_stamps, STAMP_CLOSE, STAMP_OPEN};

use super::load::LoadSpec;
use super::socket::{Endpoint, FRAME_TIMEOUT};
use super::stats::{now_us, Samples};
use super::window::{Window, WindowCost};

/// What the SSE run measured.
#[derive(Debug, Default)]
pub struct SseOutcome {
    pub token_latency: Samples,
    /// The part of `token_latency` carried by each answer's first delta.
    pub first_chunk_token_latency: Samples,
    pub tokens_per_sec: f64,
    pub measured_tokens: u64,
    /// The measured window's CPU and waits.
    pub cost: WindowCost,
    pub answers: Vec<Answer>,
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
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(spec.sessions)
        .build()?;
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
        let (client, base, shared) = (client.clone(), base.clone(), shared.clone());
        let max_turns = spec.max_turns;
        tasks.spawn(async move { session_loop(client, base, session, i, shared, max_turns).await });
    }
    tokio::time::sleep(spec.warmup).await;
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
            Ok((latency, answers, problems)) => {
                outcome.token_latency.extend(latency.all);
                outcome
                    .first_chunk_token_latency
                    .extend(latency.first_chunk);
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
#[derive(Default)]
struct TokenLatency {
    all: Samples,
    first_chunk: Samples,
}

type SessionResult = (TokenLatency, Vec<Answer>, Vec<String>);

async fn session_loop(
    client: reqwest::Client,
    base: String,
    session: NewSession,
    index: usize,
    shared: Arc<Shared>,
    max_turns: Option<usize>,
) -> SessionResult {
    let mut latency = TokenLatency::default();
    let mut answers = Vec::new();
    let mut problems = Vec::new();
    let mut turns = 0;
    while !shared.stop.load(Ordering::Relaxed) && max_turns.is_none_or(|m| turns < m) {
        let prompt = format!("bench session {index} turn {turns}: how does a replay window work?");
        match turn(&client, &base, &session, &prompt, &shared, &mut latency).await {
            Ok(answer) => answers.push(answer),
            Err(e) => {
                problems.push(format!("SSE session {}: {e:#}", session.session_id));
                break;
            }
        }
        turns += 1;
    }
    (latency, answers, problems)
}

/// One question and its whole answer over one SSE response.
async fn turn(
    client: &reqwest::Client,
    base: &str,
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
    let res = client
        .post(format!("{base}/api/ui/chat"))
        .bearer_auth(&session.token)
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    let mut body = res.bytes_stream();
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
        let base = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        tokio::spawn(serve(listener, accepted.clone()));
        let client = reqwest::Client::new();
        let session = NewSession {
            session_id: "s".into(),
            token: "t".into(),
        };
        let shared = Shared::default();
        let mut latency = TokenLatency::default();
        for turn_no in 0..3 {
            let answer = turn(&client, &base, &session, "q", &shared, &mut latency)
                .await
                .unwrap();
            assert_eq!(
                (answer.message_id.as_str(), answer.text.as_str()),
                ("m1", "hi ")
            );
            assert_eq!(answer.deltas, 1, "turn {turn_no}");
        }
        // A body dropped at `[DONE]`, before its terminator, would have
        // closed each connection: three questions, three connections.
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
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
