//! Sessions chatting at once, each sending its turns back to back over its
//! own WebSocket: the end-to-end throughput, time to first chunk and chunk
//! latency measures all come from here. Every frame is checked as it
//! arrives (see [`super::ledger`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use protocol::{ControlKind, EventKind, MessageId};

use super::ledger::{self, Answered, MessageCheck, SeqLog};
use super::socket::{chat_frame, Attach, Endpoint, Frame, Ready, Socket, FRAME_TIMEOUT};
use super::stats::{now_us, Samples};
use super::token_trace::{TokenTrace, TracedToken};
use super::window::{Window, WindowCost};

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub sessions: usize,
    /// Running, but not counted yet (connections warm, workers busy),
    /// from the last session's first question on.
    pub warmup: Duration,
    pub measure: Duration,
    /// The sessions' first questions spread evenly over this span (zero:
    /// all at once): see [`Stagger`].
    pub stagger: Stagger,
    /// WebSocket handshakes in flight at once while opening the sessions.
    pub connect_concurrency: usize,
    /// Tokens of a demo answer, when a `done` does not report its usage.
    pub answer_tokens: usize,
    /// Turns a session sends at most (`None`: until the run ends).
    pub max_turns: Option<usize>,
    /// The demo stamps its tokens (`DEMO_STAMP_TOKENS`): each token's
    /// latency is measured, and the stamps are taken off before the answer
    /// is checked.
    pub stamped_tokens: bool,
    /// CPU the client spends, spinning, per token it receives beyond its
    /// own work: the `sse` comparison's control (`--sse-control-ns`), a
    /// WebSocket side made to cost a known amount more per token.
    pub extra_client_cpu_per_token: Duration,
    /// Every measured token is kept in the outcome's `token_trace`.
    pub trace_tokens: bool,
    /// The workers' `/metrics`, read around the measured window for their
    /// publish → ack time (none: not read).
    pub worker_metrics: Vec<String>,
}

/// When each session asks its first question. Paced sessions asking back
/// to back keep the phase they started with (every answer takes as long),
/// so sessions that all start at once ask every question together: each
/// turn is a burst of every session's question, job and first chunk, and
/// the latency measured is how the stack absorbs that burst. Spread over
/// one answer's length, the sessions' turns keep apart as independent
/// users' do, and the stack carries a steady load.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stagger {
    pub span: Duration,
}

impl Stagger {
    /// A paced answer's length: the first token's wait, then its tokens.
    pub fn paced_answer(first_token: Duration, answer_tokens: usize, tokens_per_sec: f64) -> Self {
        let tokens = if tokens_per_sec > 0.0 {
            Duration::from_secs_f64(answer_tokens as f64 / tokens_per_sec)
        } else {
            Duration::ZERO
        };
        Self {
            span: first_token + tokens,
        }
    }

    /// Session `index` of `sessions` waits this long before its first
    /// question.
    pub fn first_question(&self, index: usize, sessions: usize) -> Duration {
        self.span.mul_f64(index as f64 / sessions.max(1) as f64)
    }
}

/// What a load run measured.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    /// Chunk frames received per second during the measured window.
    pub chunks_per_sec: f64,
    /// Tokens of answers received per second during the measured window.
    pub tokens_per_sec: f64,
    /// Bytes of answer text (stamps not counted) received per second.
    pub bytes_per_sec: f64,
    /// Answers completed per second during the measured window.
    pub turns_per_sec: f64,
    /// Worker publish → client receive, measured window only.
    pub chunk_latency: Samples,
    /// Model yields a token → client receives the frame carrying it
    /// (coalescing wait included), stamped runs and measured window only.
    pub token_latency: Samples,
    /// The part of `token_latency` carried by each answer's first chunk.
    pub first_chunk_token_latency: Samples,
    /// Every measured token, when the spec asked for them.
    pub token_trace: TokenTrace,
    /// `chat` sent → first chunk received, measured window only.
    pub ttft: Samples,
    /// `chat` sent → `accepted` received (the gateway's part of the first chunk's wait).
    pub accepted: Samples,
    /// `chat` sent → the worker publishes the first chunk (gateway, queue,
    /// worker start; the rest of the first chunk's wait is its delivery).
    pub first_published: Samples,
    /// The measured window's CPU and waits.
    pub cost: WindowCost,
    /// Chunks delivered during the measured window.
    pub measured_chunks: u64,
    /// Tokens delivered during the measured window.
    pub measured_tokens: u64,
    pub sessions: Vec<SessionLog>,
    pub problems: Vec<String>,
    pub restarts: u64,
    /// Sockets the server closed mid-run that the client reopened with
    /// `after_seq` (as a browser does).
    pub reconnects: u64,
}

/// One session's record, for the check against the stream.
#[derive(Debug)]
pub struct SessionLog {
    pub session_id: String,
    pub token: String,
    pub after_seq: u64,
    pub seqs: SeqLog,
    pub turns: usize,
    /// The run ended with the last answer complete.
    pub complete: bool,
}

#[derive(Default)]
struct Shared {
    chunks: AtomicU64,
    tokens: AtomicU64,
    bytes: AtomicU64,
    turns: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
}

/// Opens `n` new sessions through `endpoint`, `concurrency` handshakes at a time.
pub async fn open_sessions(
    endpoint: &Endpoint,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<(Socket, Ready)>> {
    let attach = Attach::default();
    futures::stream::iter(0..n)
        .map(|_| Socket::connect(endpoint, &attach))
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

/// Runs `spec` against `endpoint`.
pub async fn run(endpoint: &Endpoint, spec: &LoadSpec) -> anyhow::Result<LoadOutcome> {
    let sockets = open_sessions(endpoint, spec.sessions, spec.connect_concurrency).await?;
    let shared = Arc::new(Shared::default());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (socket, ready)) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
        let spec = spec.clone();
        tasks.spawn(chat_loop(endpoint.clone(), socket, ready, i, shared, spec));
    }
    tokio::time::sleep(spec.stagger.span + spec.warmup).await;
    let counts = |shared: &Shared| {
        [&shared.chunks, &shared.turns, &shared.tokens, &shared.bytes]
            .map(|c| c.load(Ordering::Relaxed))
    };
    let window = Window::open(&spec.worker_metrics).await;
    let [c0, t0, k0, b0] = counts(&shared);
    let started = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(spec.measure).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let [c1, t1, k1, b1] = counts(&shared);
    let cost = window.close(&spec.worker_metrics).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut outcome = LoadOutcome {
        chunks_per_sec: (c1 - c0) as f64 / elapsed,
        turns_per_sec: (t1 - t0) as f64 / elapsed,
        tokens_per_sec: (k1 - k0) as f64 / elapsed,
        bytes_per_sec: (b1 - b0) as f64 / elapsed,
        cost,
        measured_chunks: c1 - c0,
        measured_tokens: k1 - k0,
        ..Default::default()
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(run) => {
                outcome.chunk_latency.extend(run.chunk_latency);
                outcome.token_latency.extend(run.token_latency);
                outcome
                    .first_chunk_token_latency
                    .extend(run.first_chunk_token_latency);
                outcome.token_trace.extend(run.token_trace);
                outcome.ttft.extend(run.ttft);
                outcome.accepted.extend(run.accepted);
                outcome.first_published.extend(run.first_published);
                outcome.problems.extend(run.problems);
                outcome.restarts += run.restarts;
                outcome.reconnects += run.reconnects;
                outcome.sessions.push(run.log);
            }
            Err(e) => outcome.problems.push(format!("a session task failed: {e}")),
        }
    }
    Ok(outcome)
}

/// Checks up to `max` sessions' received events against the stream.
pub async fn verify_against_stream(
    endpoint: &Endpoint,
    sessions: &[SessionLog],
    max: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    for s in sessions.iter().filter(|s| s.complete).take(max) {
        match ledger::stored_seqs(endpoint, &s.session_id, &s.token, s.after_seq).await {
            Ok(stored) => {
                if let Err(e) = ledger::compare(&s.seqs.seqs, &stored) {
                    problems.push(format!("session {}: {e:#}", s.session_id));
                }
            }
            Err(e) => problems.push(format!("session {}: {e:#}", s.session_id)),
        }
    }
    problems
}

struct SessionRun {
    log: SessionLog,
    chunk_latency: Samples,
    token_latency: Samples,
    first_chunk_token_latency: Samples,
    token_trace: TokenTrace,
    ttft: Samples,
    accepted: Samples,
    first_published: Samples,
    problems: Vec<String>,
    restarts: u64,
    reconnects: u64,
    /// The answer before this turn's, whose superseded attempts' late
    /// events are ignored.
    answered: Option<Answered>,
}

impl SessionRun {
    /// A session's run before its first turn, from the `ready` it attached with.
    fn new(ready: &Ready, spec: &LoadSpec) -> Self {
        Self {
            log: SessionLog {
                session_id: ready.session_id.clone(),
                token: ready.token.clone(),
                after_seq: ready.last_seq,
                seqs: SeqLog::after(ready.last_seq),
                turns: 0,
                complete: true,
            },
            chunk_latency: Samples::default(),
            token_latency: Samples::default(),
            first_chunk_token_latency: Samples::default(),
            token_trace: TokenTrace::new(spec.trace_tokens),
            ttft: Samples::default(),
            accepted: Samples::default(),
            first_published: Samples::default(),
            problems: Vec::new(),
            restarts: 0,
            reconnects: 0,
            answered: None,
        }
    }
}

/// Times a session may lose its socket in one run before the bench calls
/// it failed: a healthy stack closes one only on restart or a stuck write.
const MAX_RECONNECTS: u64 = 20;

async fn chat_loop(
    endpoint: Endpoint,
    mut socket: Socket,
    ready: Ready,
    index: usize,
    shared: Arc<Shared>,
    spec: LoadSpec,
) -> SessionRun {
    let mut run = SessionRun::new(&ready, &spec);
    tokio::time::sleep(spec.stagger.first_question(index, spec.sessions)).await;
    while !shared.stop.load(Ordering::Relaxed) && spec.max_turns.is_none_or(|m| run.log.turns < m) {
        let prompt = format!(
            "bench session {index} turn {}: how does a replay window work?",
            run.log.turns
        );
        match turn(&endpoint, &mut socket, &mut run, &shared, &spec, prompt).await {
            Ok(()) => {
                run.log.turns += 1;
                shared.turns.fetch_add(1, Ordering::Relaxed);
            }
            Err(problem) => {
                run.problems
                    .push(format!("session {}: {problem}", ready.session_id));
                run.log.complete = false;
                break;
            }
        }
    }
    socket.close().await;
    run
}

/// Keeps this thread busy for `cpu` (nothing when zero): work that costs
/// what it says, on the client's own task, as a heavier client would.
fn spin(cpu: Duration) {
    if cpu.is_zero() {
        return;
    }
    let until = Instant::now() + cpu;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// One question and its whole answer. A socket the server closes is
/// reopened with `after_seq` = the last event received, and the answer
/// continues from the replay.
async fn turn(
    endpoint: &Endpoint,
    socket: &mut Socket,
    run: &mut SessionRun,
    shared: &Shared,
    spec: &LoadSpec,
    prompt: String,
) -> Result<(), String> {
    let message_id = MessageId::new().to_string();
    let frame = chat_frame(&message_id, &prompt);
    let sent = Instant::now();
    let sent_us = now_us();
    socket
        .send(frame)
        .await
        .map_err(|e| format!("send: {e:#}"))?;
    let mut check = MessageCheck::new(message_id, prompt);
    let mut stamps = Unstamper::new(spec.stamped_tokens);
    let mut chunks_received = 0u32;
    loop {
        let text = match socket.next_text(FRAME_TIMEOUT).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                reconnect(endpoint, socket, run).await?;
                continue;
            }
            Err(e) => return Err(format!("{e:#}")),
        };
        let mut frame = Frame::parse(&text).map_err(|e| format!("{e:#}"))?;
        let received_us = now_us();
        // `accepted` repeats the seq of the user message it stored; only
        // stream events count.
        if let (Some(seq), false) = (frame.seq, frame.is(ControlKind::Accepted)) {
            run.log.seqs.push(seq)?;
        }
        let kind = EventKind::parse(&frame.kind);
        if run
            .answered
            .as_ref()
            .is_some_and(|a| a.superseded(kind, &frame))
        {
            continue;
        }
        match kind {
            Some(EventKind::Chunk) => {
                let stamps = stamps.answer(&mut frame);
                let first = check.chunk(&frame)?;
                let text = frame.text.as_deref().unwrap_or_default();
                let tokens = if spec.stamped_tokens {
                    stamps.len()
                } else {
                    token_starts(text)
                };
                shared.chunks.fetch_add(1, Ordering::Relaxed);
                shared.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
                shared.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
                if shared.measuring.load(Ordering::Relaxed) {
                    if first {
                        run.ttft.push(sent.elapsed());
                        if let Some(published) = frame.published_at_us {
                            run.first_published
                                .push_micros(published.saturating_sub(sent_us));
                        }
                    }
                    if let Some(published) = frame.published_at_us {
                        run.chunk_latency
                            .push_micros(received_us.saturating_sub(published));
                    }
                    for yielded in stamps {
                        let waited = received_us.saturating_sub(yielded);
                        run.token_latency.push_micros(waited);
                        if first {
                            run.first_chunk_token_latency.push_micros(waited);
                        }
                        run.token_trace.push(TracedToken {
                            received_us,
                            latency_us: waited,
                            chunk: chunks_received,
                        });
                    }
                }
                chunks_received += 1;
                spin(spec.extra_client_cpu_per_token * u32::try_from(tokens).unwrap_or(u32::MAX));
            }
            None if frame.is(ControlKind::Accepted) && shared.measuring.load(Ordering::Relaxed) => {
                run.accepted.push(sent.elapsed());
            }
            Some(EventKind::Reasoning) => {
                stamps.reasoning(&mut frame);
                check.reasoning(&frame)?
            }
            Some(EventKind::Restart) => {
                stamps = Unstamper::new(spec.stamped_tokens);
                check.restart(&frame)?
            }
            Some(EventKind::Done) => {
                check.done(&frame, spec.answer_tokens)?;
                run.restarts += u64::from(check.restarts);
                run.answered = Answered::from_done(&frame);
                return Ok(());
            }
            // `error` is both a stored event and a refused frame: either fails.
            Some(EventKind::Error | EventKind::Cancelled) => {
                return Err(format!("refused or failed: {text}"))
            }
            // user_message (ours), pong, and frames this tool does not know
            Some(EventKind::UserMessage) | None => {}
        }
    }
}

/// Takes the demo's stamps off one answer's frames (when the run is
/// stamped), so the ledger checks the plain text, and gives their times. A
/// stamp the chunk size bound cut in two waits for the rest of it in the
/// next frame of its kind: its token arrives with that frame.
struct Unstamper {
    stamped: bool,
    answer: String,
    reasoning: String,
}

impl Unstamper {
    fn new(stamped: bool) -> Self {
        Self {
            stamped,
            answer: String::new(),
            reasoning: String::new(),
        }
    }

    fn answer(&mut self, frame: &mut Frame<'_>) -> Vec<u64> {
        Self::unstamp(self.stamped, &mut self.answer, frame)
    }

    fn reasoning(&mut self, frame: &mut Frame<'_>) -> Vec<u64> {
        Self::unstamp(self.stamped, &mut self.reasoning, frame)
    }

    fn unstamp(stamped: bool, carry: &mut String, frame: &mut Frame<'_>) -> Vec<u64> {
        use worker::backends::demo::{strip_stamps, STAMP_CLOSE, STAMP_OPEN};
        let Some(text) = frame.text.as_deref().filter(|_| stamped) else {
            return Vec::new();
        };
        let mut joined = std::mem::take(carry);
        joined.push_str(text);
        if let Some(open) = joined.rfind(STAMP_OPEN) {
            if !joined[open..].contains(STAMP_CLOSE) {
                *carry = joined.split_off(open);
            }
        }
        let mut plain = String::with_capacity(joined.len());
        let stamps = strip_stamps(&joined, &mut plain);
        frame.text = Some(plain.into());
        stamps
    }
}

/// Demo tokens in a chunk: a token is a word with the whitespace after it,
/// and a chunk holds whole tokens (demo words are far below the chunk bound),
/// so each token starts with the chunk or after whitespace.
fn token_starts(text: &str) -> usize {
    let mut after_space = true;
    let mut starts = 0;
    for c in text.chars() {
        let space = c.is_whitespace();
        if after_space && !space {
            starts += 1;
        }
        after_space = space;
    }
    starts
}

/// Reopens a session's socket after the server closed it, replaying from
/// the last event this client received.
async fn reconnect(
    endpoint: &Endpoint,
    socket: &mut Socket,
    run: &mut SessionRun,
) -> Result<(), String> {
    if run.reconnects >= MAX_RECONNECTS {
        return Err(format!(
            "the server closed the socket {} times",
            run.reconnects + 1
        ));
    }
    run.reconnects += 1;
    let attach = Attach {
        session: Some((run.log.session_id.clone(), run.log.token.clone())),
        after_seq: Some(run.log.seqs.last()),
    };
    let (fresh, _) = Socket::connect(endpoint, &attach)
        .await
        .map_err(|e| format!("reconnecting: {e:#}"))?;
    *socket = fresh;
    Ok(())
}

/// One session that sends `turns` questions one after the other and
/// receives every answer: the material for the replay measure.
pub async fn converse(
    endpoint: &Endpoint,
    turns: usize,
    answer_tokens: usize,
) -> anyhow::Result<SessionLog> {
    let (socket, ready) = Socket::connect(endpoint, &Attach::default()).await?;
    let spec = LoadSpec {
        sessions: 1,
        warmup: Duration::ZERO,
        measure: Duration::ZERO,
        stagger: Stagger::default(),
        trace_tokens: false,
        connect_concurrency: 1,
        answer_tokens,
        max_turns: Some(turns),
        stamped_tokens: false,
        extra_client_cpu_per_token: Duration::ZERO,
        worker_metrics: Vec::new(),
    };
    let run = chat_loop(
        endpoint.clone(),
        socket,
        ready,
        0,
        Arc::new(Shared::default()),
        spec,
    )
    .await;
    if let Some(problem) = run.problems.first() {
        anyhow::bail!("preparing a session: {problem}");
    }
    Ok(run.log)
}

#[cfg(test)]
mod tests;
