//! Sessions asking the peer turn after turn, as [`crate::bench::load`] does
//! with our system: the same prompts, so the demo model's very tokens; each
//! answer's tokens checked exactly once; some sessions drop their
//! connection half way through every answer and resume it with the
//! library's `skipCharacters`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ledger::{AnswerCheck, EventReader, PeerEvent};
use crate::bench::cpu::CpuSnapshot;
use crate::bench::load::Stagger;
use crate::bench::socket::FRAME_TIMEOUT;
use crate::bench::stats::{now_us, Samples};

/// One load run against the peer.
#[derive(Clone, Debug)]
pub struct PeerLoadSpec {
    pub sessions: usize,
    /// From the last session's first question on.
    pub warmup: Duration,
    pub measure: Duration,
    /// The sessions' first questions spread evenly over this span.
    pub stagger: Stagger,
    pub answer_tokens: usize,
    /// 0 = no delay at all, as the demo model at zero delay.
    pub tokens_per_sec: f64,
    /// The wait before the first token of a paced answer.
    pub first_token_ms: u64,
    /// Every n-th session (0 = none) drops its connection after half of
    /// each answer and resumes it.
    pub resume_every: usize,
    /// Turns a session sends at most (`None`: until the run ends).
    pub max_turns: Option<usize>,
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct PeerLoadOutcome {
    pub tokens_per_sec: f64,
    /// Bytes of token text delivered per second.
    pub token_bytes_per_sec: f64,
    pub answers_per_sec: f64,
    /// Token produced → client received, measured window only; a resumed
    /// connection's backlog is left out (it was produced before the resume
    /// was asked for), its live tokens counted.
    pub token_latency: Samples,
    /// Request sent → first token, measured window only.
    pub ttft: Samples,
    pub measured_tokens: u64,
    /// CPU seconds per process name in the measured window.
    pub cpu: BTreeMap<String, f64>,
    /// Answers checked complete, exactly once.
    pub answers: u64,
    /// Of those, answers whose connection was dropped and resumed.
    pub resumed_answers: u64,
    pub problems: Vec<String>,
}

#[derive(Default)]
struct Shared {
    tokens: AtomicU64,
    token_bytes: AtomicU64,
    answers: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
}

/// Runs `spec` against the peer at `url`; `pids` are the peer's processes,
/// whose CPU is read over the measured window (this process's too).
pub async fn run(
    url: &str,
    pids: &[(String, u32)],
    spec: &PeerLoadSpec,
) -> anyhow::Result<PeerLoadOutcome> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;
    let shared = Arc::new(Shared::default());
    // Unique per run: stream ids live in Redis for a day.
    let run_id = now_us();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..spec.sessions {
        let session = Session {
            client: client.clone(),
            url: url.to_string(),
            index,
            run_id,
            shared: shared.clone(),
            spec: spec.clone(),
        };
        tasks.spawn(session.chat());
    }
    tokio::time::sleep(spec.stagger.span + spec.warmup).await;
    let before = (
        shared.tokens.load(Ordering::Relaxed),
        shared.token_bytes.load(Ordering::Relaxed),
        shared.answers.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    let cpu_before = CpuSnapshot::of_pids(pids);
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(spec.measure).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = CpuSnapshot::of_pids(pids).since(&cpu_before);
    let after = (
        shared.tokens.load(Ordering::Relaxed),
        shared.token_bytes.load(Ordering::Relaxed),
        shared.answers.load(Ordering::Relaxed),
    );
    shared.stop.store(true, Ordering::Relaxed);
    let mut outcome = PeerLoadOutcome {
        tokens_per_sec: (after.0 - before.0) as f64 / elapsed,
        token_bytes_per_sec: (after.1 - before.1) as f64 / elapsed,
        answers_per_sec: (after.2 - before.2) as f64 / elapsed,
        measured_tokens: after.0 - before.0,
        cpu,
        ..Default::default()
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(run) => {
                outcome.token_latency.extend(run.token_latency);
                outcome.ttft.extend(run.ttft);
                outcome.answers += run.answers;
                outcome.resumed_answers += run.resumed_answers;
                outcome.problems.extend(run.problems);
            }
            Err(e) => outcome
                .problems
                .push(format!("a peer session task failed: {e}")),
        }
    }
    Ok(outcome)
}

struct Session {
    client: reqwest::Client,
    url: String,
    index: usize,
    run_id: u64,
    shared: Arc<Shared>,
    spec: PeerLoadSpec,
}

#[derive(Default)]
struct SessionRun {
    token_latency: Samples,
    ttft: Samples,
    answers: u64,
    resumed_answers: u64,
    problems: Vec<String>,
}

impl Session {
    async fn chat(self) -> SessionRun {
        let mut run = SessionRun::default();
        let mut turn = 0;
        tokio::time::sleep(
            self.spec
                .stagger
                .first_question(self.index, self.spec.sessions),
        )
        .await;
        while !self.shared.stop.load(Ordering::Relaxed)
            && self.spec.max_turns.is_none_or(|m| turn < m)
        {
            if let Err(problem) = self.answer(turn, &mut run).await {
                run.problems.push(format!(
                    "peer session {} turn {turn}: {problem}",
                    self.index
                ));
                break;
            }
            turn += 1;
        }
        run
    }

    /// One question and its whole answer, resumed half way when this
    /// session is one that drops.
    async fn answer(&self, turn: usize, run: &mut SessionRun) -> Result<(), String> {
        // The prompt our load sends, so the demo model's answer is the same.
        let prompt = format!(
            "bench session {} turn {turn}: how does a replay window work?",
            self.index
        );
        let tokens = worker::backends::demo::answer_tokens(&prompt, self.spec.answer_tokens);
        let stream_url = format!("{}/chat/r{}-s{}-t{turn}", self.url, self.run_id, self.index);
        let drops = self.spec.resume_every > 0 && self.index.is_multiple_of(self.spec.resume_every);
        let drop_after = tokens.len() / 2;
        let body = serde_json::json!({
            "tokens": tokens,
            "tokens_per_sec": self.spec.tokens_per_sec,
            "first_token_ms": self.spec.first_token_ms,
        });
        let sent = Instant::now();
        let mut response = self.open(self.client.post(&stream_url).json(&body)).await?;
        let mut reader = EventReader::default();
        let mut check = AnswerCheck::new(&tokens);
        // Tokens produced before this are a resume's backlog.
        let mut live_from_us = 0;
        let mut resumed = false;
        loop {
            let bytes = match tokio::time::timeout(FRAME_TIMEOUT, response.chunk()).await {
                Ok(Ok(Some(bytes))) => bytes,
                Ok(Ok(None)) => {
                    return Err(format!(
                        "the stream ended after {} tokens",
                        check.received()
                    ))
                }
                Ok(Err(e)) => return Err(format!("reading: {e}")),
                Err(_) => return Err(format!("nothing for {FRAME_TIMEOUT:?}")),
            };
            reader.push(&bytes);
            let mut cut = false;
            while let Some(event) = reader.next_event()? {
                match event {
                    PeerEvent::Token { i, t, x } => {
                        let first = check.received() == 0;
                        check.token(i, &x)?;
                        self.shared.tokens.fetch_add(1, Ordering::Relaxed);
                        self.shared
                            .token_bytes
                            .fetch_add(x.len() as u64, Ordering::Relaxed);
                        if self.shared.measuring.load(Ordering::Relaxed) {
                            if first {
                                run.ttft.push(sent.elapsed());
                            }
                            if t >= live_from_us {
                                run.token_latency.push_micros(now_us().saturating_sub(t));
                            }
                        }
                        if drops && !resumed && check.received() == drop_after {
                            cut = true;
                            break;
                        }
                    }
                    PeerEvent::Done { done } => check.done(done)?,
                }
            }
            if check.is_done() {
                // Read the body to its end so the connection goes back to
                // the pool (as a browser's would) instead of a new one per
                // answer; nothing may follow `done`.
                reader.push(&drain(&mut response).await?);
                if let Some(extra) = reader.next_event()? {
                    return Err(format!("{extra:?} after done"));
                }
                break;
            }
            if cut {
                // Drop the connection (and whatever it already carried past
                // this token) and resume where the client's text ends.
                drop(response);
                reader.drop_partial();
                resumed = true;
                live_from_us = now_us();
                let resume_url = format!("{stream_url}?skip={}", reader.consumed());
                response = self.open(self.client.get(&resume_url)).await?;
            }
        }
        run.answers += 1;
        run.resumed_answers += u64::from(resumed);
        self.shared.answers.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn open(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        let response = tokio::time::timeout(FRAME_TIMEOUT, request.send())
            .await
            .map_err(|_| format!("no response in {FRAME_TIMEOUT:?}"))?
            .map_err(|e| format!("request: {e}"))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(format!("status {status}: {text}"));
        }
        Ok(response)
    }
}

/// The rest of a response's body, up to its end.
async fn drain(response: &mut reqwest::Response) -> Result<Vec<u8>, String> {
    let mut rest = Vec::new();
    loop {
        match tokio::time::timeout(FRAME_TIMEOUT, response.chunk()).await {
            Ok(Ok(Some(bytes))) => rest.extend_from_slice(&bytes),
            Ok(Ok(None)) => return Ok(rest),
            Ok(Err(e)) => return Err(format!("reading the end: {e}")),
            Err(_) => return Err(format!("no end of the body in {FRAME_TIMEOUT:?}")),
        }
    }
}
