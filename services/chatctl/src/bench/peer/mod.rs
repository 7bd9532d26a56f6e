//! The peer in the same run (issue 16, point 5): Vercel's `resumable-stream`
//! on Redis, as a small Node service (`bench/peers/resumable-stream`),
//! started and stopped by the bench and fed our workload — the same number
//! of streams, the demo model's tokens at the same rate, paced and unpaced,
//! some connections dropped half way through every answer and resumed.
//!
//! Measured like ours: delivered tokens/s (and token bytes/s), token
//! latency from the peer producing a token to the client parsing it (the
//! peer stamps each token with the same clock, µs since the epoch), CPU per
//! delivered token over every process of the peer (Node, Redis, this
//! client), memory per idle stream (Node + Redis RSS), and every resumed
//! client's answer checked token by token, exactly once.
//!
//! [`run`] measures; [`PeerResults::rows`] gives the report rows and
//! [`PeerResults::ratios`] sets them against ours from the same run.

pub mod ledger;
pub mod load;
pub mod service;

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};

pub use load::{PeerLoadOutcome, PeerLoadSpec};
pub use service::{PeerOptions, PeerService};

use super::idle::rss_kib;
use super::load::Stagger;
use super::report::{thousands, Row};
use super::socket::FRAME_TIMEOUT;

/// The demo model's wait before the first token of a paced answer
/// (`DEMO_FIRST_TOKEN_MS`, the worker's default; the bench's paced stack
/// keeps it).
pub const DEMO_FIRST_TOKEN_MS: u64 = 150;

/// What the peer phase runs: the workloads of our e2e, paced and idle phases.
#[derive(Clone, Debug)]
pub struct PeerPlan {
    pub options: PeerOptions,
    /// Streams of the unpaced run (our e2e sessions); 0 skips it.
    pub sessions: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub answer_tokens: usize,
    /// Streams per paced run (our paced loads).
    pub paced_loads: Vec<usize>,
    pub paced: Duration,
    /// How the paced streams' first questions spread (as ours do).
    pub paced_stagger: Stagger,
    pub paced_tokens_per_sec: f64,
    /// Idle streams held for the memory measure; 0 skips it.
    pub idle_streams: usize,
    pub open_concurrency: usize,
    /// Every n-th session drops and resumes every answer (0 = none).
    pub resume_every: usize,
}

/// Memory of idle streams.
#[derive(Debug)]
pub struct IdleStreams {
    pub streams: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub open_secs: f64,
}

impl IdleStreams {
    pub fn bytes_per_stream(&self) -> f64 {
        (self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 * 1024.0)
            / self.streams.max(1) as f64
    }
}

/// Everything the peer phase measured.
#[derive(Debug, Default)]
pub struct PeerResults {
    /// The peer's configuration, stated so anyone can argue with it.
    pub config: String,
    pub resume_every: usize,
    pub unpaced: Option<(usize, PeerLoadOutcome)>,
    pub paced: Vec<(usize, f64, PeerLoadOutcome)>,
    pub idle: Option<IdleStreams>,
}

/// Runs the plan, each workload on a fresh peer (as ours gets a fresh
/// stack per workload); every process is stopped before this returns.
pub async fn run(plan: &PeerPlan) -> anyhow::Result<PeerResults> {
    let mut results = PeerResults {
        config: plan.options.describe(),
        resume_every: plan.resume_every,
        ..Default::default()
    };
    let spec = |sessions, measure, tokens_per_sec, stagger| PeerLoadSpec {
        sessions,
        warmup: plan.warmup,
        measure,
        stagger,
        answer_tokens: plan.answer_tokens,
        tokens_per_sec,
        first_token_ms: DEMO_FIRST_TOKEN_MS,
        resume_every: plan.resume_every,
        max_turns: None,
    };
    if plan.sessions > 0 {
        println!("peer: {} streams, zero delay", plan.sessions);
        let peer = PeerService::start(&plan.options).await?;
        let outcome = load::run(
            &peer.url(),
            &peer.pids(),
            &spec(plan.sessions, plan.measure, 0.0, Stagger::default()),
        )
        .await
        .with_context(|| format!("peer, unpaced; its logs:\n{}", peer.log_tail()))?;
        results.unpaced = Some((plan.sessions, outcome));
    }
    if !plan.paced_loads.is_empty() {
        let peer = PeerService::start(&plan.options).await?;
        for &streams in &plan.paced_loads {
            println!(
                "peer: {streams} paced streams at {} tokens/s",
                plan.paced_tokens_per_sec
            );
            let outcome = load::run(
                &peer.url(),
                &peer.pids(),
                &spec(
                    streams,
                    plan.paced,
                    plan.paced_tokens_per_sec,
                    plan.paced_stagger,
                ),
            )
            .await
            .with_context(|| format!("peer, {streams} paced; its logs:\n{}", peer.log_tail()))?;
            results
                .paced
                .push((streams, plan.paced_tokens_per_sec, outcome));
        }
    }
    if plan.idle_streams > 0 {
        println!("peer: {} idle streams", plan.idle_streams);
        let peer = PeerService::start(&plan.options).await?;
        results.idle = Some(hold_idle(&peer, plan.idle_streams, plan.open_concurrency).await?);
    }
    Ok(results)
}

/// Opens `n` streams that produce nothing (their first token is an hour
/// away), each followed by its client, and reads the peer's resident
/// memory before and after.
pub async fn hold_idle(
    peer: &PeerService,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<IdleStreams> {
    let pids: Vec<u32> = peer.pids().into_iter().map(|(_, pid)| pid).collect();
    let rss = |pids: &[u32]| -> anyhow::Result<u64> { pids.iter().map(|&p| rss_kib(p)).sum() };
    let rss_before_kib = rss(&pids)?;
    let client = reqwest::Client::new();
    let start = Instant::now();
    let url = peer.url();
    let body = serde_json::json!({
        "tokens": ["idle."],
        "tokens_per_sec": 1,
        "first_token_ms": 3_600_000,
    });
    let responses: Vec<reqwest::Response> = futures::stream::iter(0..n)
        .map(|i| {
            let request = client.post(format!("{url}/chat/idle-{i}")).json(&body);
            async move {
                let response = tokio::time::timeout(FRAME_TIMEOUT, request.send())
                    .await
                    .context("no response")??;
                anyhow::ensure!(
                    response.status().is_success(),
                    "status {}",
                    response.status()
                );
                Ok::<_, anyhow::Error>(response)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
        .with_context(|| format!("opening {n} idle streams on the peer"))?;
    let open_secs = start.elapsed().as_secs_f64();
    // The same settling time as our idle measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_kib = rss(&pids)?;
    let streams = responses.len();
    drop(responses);
    Ok(IdleStreams {
        streams,
        rss_before_kib,
        rss_after_kib,
        open_secs,
    })
}

impl PeerResults {
    /// Lost, doubled or refused tokens: any entry fails the run.
    pub fn problems(&self) -> Vec<String> {
        self.outcomes()
            .flat_map(|o| o.problems.iter().cloned())
            .collect()
    }

    fn outcomes(&self) -> impl Iterator<Item = &PeerLoadOutcome> {
        self.unpaced
            .iter()
            .map(|(_, o)| o)
            .chain(self.paced.iter().map(|(_, _, o)| o))
    }

    /// The report's rows, every name starting with `peer:`.
    pub fn rows(&mut self) -> Vec<Row> {
        let mut rows = Vec::new();
        if let Some((streams, outcome)) = &mut self.unpaced {
            let what = format!("{streams} streams, zero delay");
            rows.push(delivered_row(&what, outcome));
            if let Some(sum) = outcome.ttft.summary() {
                rows.push(Row::latency(
                    format!("peer: time to first token during the unpaced run ({what})"),
                    &sum,
                ));
            }
            rows.extend(cpu_row(&what, outcome));
        }
        for (streams, rate, outcome) in &mut self.paced {
            let what = format!("{streams} streams at {rate} tokens/s");
            if let Some(sum) = outcome.token_latency.summary() {
                let mut row = Row::latency(
                    format!(
                        "peer: token latency produced → client, {what} ({} tokens/s)",
                        thousands(outcome.tokens_per_sec)
                    ),
                    &sum,
                );
                row.values
                    .push(("tokens_per_sec".into(), outcome.tokens_per_sec));
                rows.push(row);
            }
            // Where a paced run falls short of its offered load: the wait
            // for an answer to start (the model's first-token wait included).
            if let Some(sum) = outcome.ttft.summary() {
                rows.push(Row::latency(
                    format!(
                        "peer: time to first token, {what} ({DEMO_FIRST_TOKEN_MS} ms first-token wait included)"
                    ),
                    &sum,
                ));
            }
            rows.extend(cpu_row(&what, outcome));
        }
        if let Some(idle) = &self.idle {
            let per = idle.bytes_per_stream();
            rows.push(Row::text(
                "peer: idle streams held; Node + Redis RSS per stream",
                vec![
                    ("streams".into(), idle.streams as f64),
                    ("bytes_per_stream".into(), per),
                    ("rss_before_kib".into(), idle.rss_before_kib as f64),
                    ("rss_after_kib".into(), idle.rss_after_kib as f64),
                    ("open_secs".into(), idle.open_secs),
                ],
                format!(
                    "{} streams, {:.1} KiB each (RSS {} → {} MiB, opened in {:.1} s)",
                    thousands(idle.streams as f64),
                    per / 1024.0,
                    idle.rss_before_kib / 1024,
                    idle.rss_after_kib / 1024,
                    idle.open_secs
                ),
            ));
        }
        let (answers, resumed) = self
            .outcomes()
            .fold((0, 0), |(a, r), o| (a + o.answers, r + o.resumed_answers));
        if answers > 0 {
            let problems = self.problems().len();
            rows.push(Row::text(
                format!(
                    "peer: answers checked token by token (every {}th session dropped its connection half way through every answer and resumed)",
                    self.resume_every
                ),
                vec![
                    ("answers".into(), answers as f64),
                    ("resumed_answers".into(), resumed as f64),
                    ("problems".into(), problems as f64),
                ],
                format!(
                    "{} answers, {} of them resumed mid-stream: {}",
                    thousands(answers as f64),
                    thousands(resumed as f64),
                    if problems == 0 {
                        "every token exactly once".to_string()
                    } else {
                        format!("{problems} problems")
                    }
                ),
            ));
        }
        rows
    }

    /// Ours ÷ the peer's, from our rows of the same run: throughput, CPU
    /// per token and memory per idle stream. Ours counts chunks; they are
    /// tokens only with `--chunk-window-ms 0` (the bench's default for the
    /// zero-delay stack), so `chunk_is_token` says whether they compare.
    pub fn ratios(&self, ours: &[Row], chunk_is_token: bool) -> Vec<Row> {
        let find = |prefix: &str, key: &str| {
            ours.iter()
                .find(|r| r.name.starts_with(prefix))
                .and_then(|r| r.value(key))
        };
        let mut rows = Vec::new();
        // Paced: ours counts delivered tokens here, whatever the chunking.
        for (streams, _, peer) in &self.paced {
            let ours = find(
                &format!("CPU per delivered token ({streams} paced streams)"),
                "total_us_per_token",
            );
            let (Some(our_cpu), Some(peer_cpu)) = (ours, cpu_per_token_us(peer)) else {
                continue;
            };
            let ratio = our_cpu / peer_cpu.max(f64::MIN_POSITIVE);
            let mut row = Row::text(
                format!(
                    "ours ÷ peer: CPU per delivered token, all processes, {streams} paced streams"
                ),
                vec![("ratio".into(), ratio), ("streams".into(), *streams as f64)],
                format!("{ratio:.2} ({our_cpu:.1} µs against {peer_cpu:.1} µs)"),
            );
            if *streams == PACED_CPU_TARGET_STREAMS {
                row = row.target("≤ 1 (no more CPU per token than the peer)", ratio <= 1.0);
            }
            rows.push(row);
        }
        let Some((_, peer)) = &self.unpaced else {
            return rows;
        };
        if chunk_is_token {
            if let Some(our_rate) = find("end-to-end chunks/s", "chunks_per_sec") {
                let ratio = our_rate / peer.tokens_per_sec.max(f64::MIN_POSITIVE);
                rows.push(Row::text(
                    "ours ÷ peer: delivered tokens/s, zero delay (ours: a chunk per token)",
                    vec![("ratio".into(), ratio)],
                    format!(
                        "{ratio:.2} ({} against {})",
                        thousands(our_rate),
                        thousands(peer.tokens_per_sec)
                    ),
                ));
            }
            if let (Some(our_cpu), Some(peer_cpu)) = (
                find("CPU per delivered chunk (e2e run)", "total_us_per_chunk"),
                cpu_per_token_us(peer),
            ) {
                let ratio = our_cpu / peer_cpu.max(f64::MIN_POSITIVE);
                rows.push(Row::text(
                    "ours ÷ peer: CPU per delivered token, all processes, zero delay",
                    vec![("ratio".into(), ratio)],
                    format!("{ratio:.2} ({our_cpu:.1} µs against {peer_cpu:.1} µs)"),
                ));
            }
        }
        if let (Some(ours), Some(idle)) = (
            find("idle WebSockets held", "bytes_per_connection"),
            &self.idle,
        ) {
            let peer = idle.bytes_per_stream();
            let ratio = ours / peer.max(f64::MIN_POSITIVE);
            rows.push(Row::text(
                "ours ÷ peer: memory per idle stream (ours: gateway RSS per idle WebSocket)",
                vec![("ratio".into(), ratio)],
                format!(
                    "{ratio:.2} ({:.1} KiB against {:.1} KiB)",
                    ours / 1024.0,
                    peer / 1024.0
                ),
            ));
        }
        rows
    }
}

/// The paced load at which our CPU per token is held against the peer's.
const PACED_CPU_TARGET_STREAMS: usize = 1_000;

fn delivered_row(what: &str, outcome: &PeerLoadOutcome) -> Row {
    let mut row = Row::rate(
        format!("peer: delivered tokens/s, {what}"),
        "tokens_per_sec",
        outcome.tokens_per_sec,
        "tokens/s",
    );
    row.display.push_str(&format!(
        " ({} B/s of token text, {} answers/s)",
        thousands(outcome.token_bytes_per_sec),
        thousands(outcome.answers_per_sec)
    ));
    row.values
        .push(("token_bytes_per_sec".into(), outcome.token_bytes_per_sec));
    row.values
        .push(("answers_per_sec".into(), outcome.answers_per_sec));
    row
}

fn cpu_per_token_us(outcome: &PeerLoadOutcome) -> Option<f64> {
    if outcome.measured_tokens == 0 || outcome.cpu.is_empty() {
        return None;
    }
    Some(outcome.cpu.values().sum::<f64>() * 1e6 / outcome.measured_tokens as f64)
}

/// CPU per delivered token, per process of the peer and this client.
fn cpu_row(what: &str, outcome: &PeerLoadOutcome) -> Option<Row> {
    let total = cpu_per_token_us(outcome)?;
    let tokens = outcome.measured_tokens as f64;
    let mut values = vec![("total_us_per_token".to_string(), total)];
    let mut parts = Vec::new();
    for (name, secs) in &outcome.cpu {
        let us = secs * 1e6 / tokens;
        values.push((format!("{name}_us_per_token"), us));
        parts.push(format!(
            "{} {us:.1}",
            if name == "bench" { "client" } else { name }
        ));
    }
    Some(Row::text(
        format!("peer: CPU per delivered token ({what}), µs"),
        values,
        format!("{total:.1} in all: {}", parts.join(", ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ratios find our rows by the names run.rs gives them: a renamed
    /// row would silently drop a comparison.
    #[test]
    fn ratios_set_our_rows_against_the_peers() {
        let ours = vec![
            Row::rate(
                "end-to-end chunks/s to clients via Nginx, 200 sessions, demo model at zero delay",
                "chunks_per_sec",
                20_000.0,
                "chunks/s",
            ),
            Row::text(
                "CPU per delivered chunk (e2e run), µs",
                vec![("total_us_per_chunk".into(), 60.0)],
                String::new(),
            ),
        ];
        let mut cpu = std::collections::BTreeMap::new();
        cpu.insert("node".to_string(), 0.3);
        let results = PeerResults {
            unpaced: Some((
                200,
                PeerLoadOutcome {
                    tokens_per_sec: 40_000.0,
                    measured_tokens: 10_000,
                    cpu,
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let rows = results.ratios(&ours, true);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].value("ratio"), Some(0.5));
        assert_eq!(rows[1].value("ratio"), Some(2.0));
        assert!(results.ratios(&ours, false).is_empty());
    }

    #[test]
    fn paced_cpu_per_token_is_set_against_the_peers_at_the_same_streams() {
        let ours = vec![
            Row::text(
                "CPU per delivered token (1000 paced streams), µs",
                vec![("total_us_per_token".into(), 45.0)],
                String::new(),
            ),
            Row::text(
                "CPU per delivered token (500 paced streams), µs",
                vec![("total_us_per_token".into(), 60.0)],
                String::new(),
            ),
        ];
        let peer = |cpu_secs: f64| {
            let mut cpu = std::collections::BTreeMap::new();
            cpu.insert("node".to_string(), cpu_secs);
            PeerLoadOutcome {
                measured_tokens: 10_000,
                cpu,
                ..Default::default()
            }
        };
        let results = PeerResults {
            // 50 µs and 40 µs per token.
            paced: vec![(1_000, 50.0, peer(0.5)), (500, 50.0, peer(0.4))],
            ..Default::default()
        };
        let rows = results.ratios(&ours, false);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].value("ratio"), Some(0.9));
        assert_eq!(rows[0].met, Some(true), "the target is at 1,000 streams");
        assert_eq!(rows[1].value("ratio"), Some(1.5));
        assert_eq!(rows[1].met, None);
    }
}
