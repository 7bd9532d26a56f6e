//! The order of a bench run, the stacks it starts, and what it reports.

use std::time::Duration;

use anyhow::{bail, Context};
use stack::{Stack, StackOptions};

use super::idle;
use super::load::{self, LoadOutcome, LoadSpec};
use super::peer::{self, PeerOptions, PeerPlan};
use super::raw_nats::NatsTarget;
use super::replay;
use super::report::{thousands, Machine, Report, Row};
use super::socket::Endpoint;
use super::{BenchArgs, Phase, Profile};
use cpu_rows::{cpu_row, cpu_token_row};

mod capacity;
mod cpu_rows;
mod paced;
mod raw;

pub use capacity::Capacity;

/// The targets printed next to the results (never asserted).
const TARGET_E2E_CHUNKS: f64 = 50_000.0;
const TARGET_E2E_RATIO: f64 = 0.5;
const TARGET_TTFT_P50_MS: f64 = 3.0;
const TARGET_IDLE_CONNECTIONS: usize = 10_000;
const TARGET_IDLE_BYTES: f64 = 20.0 * 1024.0;
const TARGET_REPLAY_P99_MS: f64 = 50.0;

/// Every parameter, resolved from the flags and the profile.
#[derive(Clone, Debug)]
struct Settings {
    core_messages: u64,
    js_messages: u64,
    sessions: usize,
    warmup: Duration,
    measure: Duration,
    ttft_sessions: usize,
    ttft: Duration,
    paced_loads: Vec<usize>,
    paced: Duration,
    /// How the paced streams' first questions spread.
    paced_stagger: load::Stagger,
    connect_samples: usize,
    replay_samples: usize,
    idle_connections: usize,
    scaling: Duration,
    capacity_loads: Vec<usize>,
}

fn secs(flag: Option<f64>, default: f64) -> Duration {
    Duration::from_secs_f64(flag.unwrap_or(default).max(0.0))
}

impl Settings {
    fn resolve(a: &BenchArgs) -> Self {
        let full = a.profile == Profile::Full;
        let pick = |short: f64, long: f64| if full { long } else { short };
        Settings {
            core_messages: a
                .core_messages
                .unwrap_or(if full { 2_000_000 } else { 500_000 }),
            js_messages: a
                .js_messages
                .unwrap_or(if full { 500_000 } else { 150_000 }),
            sessions: a.sessions.unwrap_or(if full { 1_000 } else { 200 }),
            warmup: secs(a.warmup_secs, pick(2.0, 3.0)),
            measure: secs(a.measure_secs, pick(8.0, 20.0)),
            ttft_sessions: a.ttft_sessions.unwrap_or(1),
            ttft: secs(a.ttft_secs, pick(4.0, 10.0)),
            paced_loads: if a.paced_loads.is_empty() {
                if full {
                    vec![10, 100, 500, 1_000, 2_000]
                } else {
                    vec![10, 100, 500]
                }
            } else {
                a.paced_loads.clone()
            },
            paced: secs(a.paced_secs, pick(5.0, 15.0)),
            paced_stagger: if a.paced_in_step {
                load::Stagger::default()
            } else {
                load::Stagger::paced_answer(
                    Duration::from_millis(peer::DEMO_FIRST_TOKEN_MS),
                    a.answer_tokens,
                    a.paced_tokens_per_sec,
                )
            },
            connect_samples: a.connect_samples.unwrap_or(if full { 2_000 } else { 300 }),
            replay_samples: a.replay_samples.unwrap_or(if full { 200 } else { 30 }),
            idle_connections: a.idle_connections.unwrap_or(if full {
                TARGET_IDLE_CONNECTIONS
            } else {
                2_000
            }),
            scaling: secs(a.scaling_secs, pick(5.0, 12.0)),
            capacity_loads: if a.capacity_loads.is_empty() {
                if full {
                    vec![250, 500, 750, 1_000, 1_500, 2_000]
                } else {
                    vec![250, 500, 1_000]
                }
            } else {
                a.capacity_loads.clone()
            },
        }
    }
}

/// Runs the bench; fails when an event was lost, doubled or refused.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args);
    let mut report = Report {
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        profile: format!("{:?}", args.profile).to_lowercase(),
        machine: Machine::probe(),
        ..Default::default()
    };
    println!("chatctl bench, profile {}: {:?}", report.profile, settings);
    let result = match &args.url {
        Some(url) => attached(&args, &settings, &mut report, url).await,
        None => own_stacks(&args, &settings, &mut report).await,
    };
    if let Err(e) = &result {
        report.problem(format!("the run stopped: {e:#}"));
    }
    let markdown = report.markdown();
    println!("\n{markdown}");
    if let Some(path) = &args.json_out {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    result?;
    if !report.problems.is_empty() {
        bail!(
            "{} problems (lost, doubled or refused events)",
            report.problems.len()
        );
    }
    Ok(())
}

fn zero_delay_env(args: &BenchArgs, s: &Settings) -> Vec<(String, String)> {
    let jobs = s.sessions.max(s.ttft_sessions) + 16;
    let mut env = common_env(jobs);
    env.extend([
        ("DEMO_TOKENS_PER_SEC".to_string(), "0".to_string()),
        ("DEMO_ANSWER_TOKENS".into(), args.answer_tokens.to_string()),
        ("CHUNK_WINDOW_MS".into(), args.chunk_window_ms.to_string()),
    ]);
    env
}

fn paced_env(args: &BenchArgs, s: &Settings) -> Vec<(String, String)> {
    let jobs = s.paced_loads.iter().copied().max().unwrap_or(0) + 16;
    let mut env = common_env(jobs);
    env.extend([
        (
            "DEMO_TOKENS_PER_SEC".to_string(),
            args.paced_tokens_per_sec.to_string(),
        ),
        ("DEMO_ANSWER_TOKENS".into(), args.answer_tokens.to_string()),
        ("DEMO_STAMP_TOKENS".into(), "true".into()),
    ]);
    if let Some(window) = args.paced_chunk_window_ms {
        env.push(("CHUNK_WINDOW_MS".into(), window.to_string()));
    }
    if let Some(max) = args.paced_chunk_window_max_ms {
        env.push(("CHUNK_WINDOW_MAX_MS".into(), max.to_string()));
    }
    env
}

/// Settings every bench stack shares: room for `jobs` generations at once
/// on any one worker, no per-connection frame limit in the way of turns
/// sent back to back, and quiet logs.
fn common_env(jobs: usize) -> Vec<(String, String)> {
    vec![
        ("RUST_LOG".to_string(), "warn".to_string()),
        ("WORKER_CONCURRENCY".into(), jobs.to_string()),
        (
            "CHAT_MAX_ACK_PENDING".into(),
            (jobs * 2).max(1024).to_string(),
        ),
        ("GATEWAY_FRAMES_PER_SEC".into(), "100000".into()),
        ("GATEWAY_FRAME_BURST".into(), "100000".into()),
    ]
}

async fn own_stacks(args: &BenchArgs, s: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let zero_delay = [
        Phase::Raw,
        Phase::Connect,
        Phase::E2e,
        Phase::Ttft,
        Phase::Replay,
        Phase::Idle,
        Phase::Scaling,
    ];
    if zero_delay.iter().any(|p| args.runs(*p)) {
        println!(
            "starting {} gateways, {} workers (demo model at zero delay), nats-server, nginx",
            args.gateways, args.workers
        );
        let mut stack = Stack::start(StackOptions {
            gateways: args.gateways,
            workers: args.workers,
            env: zero_delay_env(args, s),
            nginx: true,
            ..Default::default()
        })
        .await
        .context("starting the zero-delay stack")?;
        let endpoint = Endpoint::parse(&stack.nginx_url())?;
        let pids: Vec<u32> = (0..stack.gateway_count())
            .filter_map(|i| stack.gateway_pid(i))
            .collect();
        let metrics = gateway_metrics_urls(&stack);
        common_phases(
            args,
            s,
            report,
            &endpoint,
            NatsTarget {
                url: &stack.nats_url(),
                access: &stack.nats_security().access(protocol::access::Role::Ops),
            },
            &pids,
            &metrics,
        )
        .await?;
        if args.runs(Phase::Scaling) {
            scaling(args, s, report, &endpoint, &mut stack).await?;
        }
    }
    if args.runs(Phase::Paced) || args.runs(Phase::Sse) {
        paced::own_stacks(args, s, report).await?;
    }
    if args.runs(Phase::Capacity) {
        capacity::run(args, s, report).await?;
    }
    if args.runs(Phase::Peer) {
        peer_phase(args, s, report).await?;
    }
    Ok(())
}

/// The peer under our workloads, once our stacks are stopped; its rows,
/// then ours ÷ its from this run.
async fn peer_phase(args: &BenchArgs, s: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let plan = PeerPlan {
        options: PeerOptions {
            processes: args.peer_processes,
            appendonly: args.peer_redis_appendonly,
        },
        sessions: s.sessions,
        warmup: s.warmup,
        measure: s.measure,
        answer_tokens: args.answer_tokens,
        paced_loads: s.paced_loads.clone(),
        paced: s.paced,
        paced_stagger: s.paced_stagger,
        paced_tokens_per_sec: args.paced_tokens_per_sec,
        idle_streams: s.idle_connections,
        open_concurrency: args.open_concurrency,
        resume_every: args.peer_resume_every,
    };
    let mut results = peer::run(&plan).await.context("the peer")?;
    report.note(format!("peer: {}", results.config));
    for row in results.rows() {
        report.push(row);
    }
    for row in results.ratios(&report.rows, args.chunk_window_ms == 0) {
        report.push(row);
    }
    for p in results.problems() {
        report.problem(p);
    }
    Ok(())
}

async fn attached(
    args: &BenchArgs,
    s: &Settings,
    report: &mut Report,
    url: &str,
) -> anyhow::Result<()> {
    let endpoint = Endpoint::parse(url)?;
    let pids = idle::pids_named("gateway");
    report.skip(format!(
        "attached to {url}: the workers' settings (pacing, chunk window) are whatever that stack runs"
    ));
    let nats = NatsTarget::of_args(args);
    common_phases(args, s, report, &endpoint, nats, &pids, &[]).await?;
    if args.runs(Phase::Scaling) {
        report.skip("worker scaling: needs to stop workers (no --url)");
    }
    if args.runs(Phase::Paced) {
        report.skip("paced chunk latency: needs workers at a paced setting (no --url)");
    }
    if args.runs(Phase::Peer) {
        report.skip("the peer: measured only next to stacks this bench starts (no --url)");
    }
    Ok(())
}

/// The measures that need only an entry point (and NATS for the raw ones).
/// Returns the pipelined JetStream rate, when measured.
async fn common_phases(
    args: &BenchArgs,
    s: &Settings,
    report: &mut Report,
    endpoint: &Endpoint,
    nats: NatsTarget<'_>,
    gateway_pids: &[u32],
    gateway_metrics: &[String],
) -> anyhow::Result<Option<f64>> {
    let mut js_rate = None;
    if args.runs(Phase::Raw) {
        js_rate = Some(raw::raw_phase(args, s, report, &nats).await?);
    }
    if args.runs(Phase::Connect) {
        println!("connect + ready, {} samples", s.connect_samples);
        let (mut fresh, mut existing) =
            idle::connect_latency(endpoint, s.connect_samples, args.connect_concurrency).await?;
        if let Some(sum) = fresh.summary() {
            report.push(Row::latency(
                format!(
                    "WebSocket connect + ready via Nginx, new session ({} at once)",
                    args.connect_concurrency
                ),
                &sum,
            ));
        }
        if let Some(sum) = existing.summary() {
            report.push(Row::latency(
                "WebSocket connect + ready via Nginx, existing session",
                &sum,
            ));
        }
    }
    // Idle memory first, on gateways no load has run through yet: memory a
    // load freed would otherwise be reused and flatter the figure.
    if args.runs(Phase::Idle) {
        if gateway_pids.is_empty() {
            report.skip("idle memory: no gateway process found");
        } else {
            println!(
                "idle: {} connections across {} gateways",
                s.idle_connections,
                gateway_pids.len()
            );
            let outcome = idle::hold(
                endpoint,
                s.idle_connections,
                args.open_concurrency,
                gateway_pids,
                Duration::from_secs(1),
            )
            .await?;
            let per = outcome.bytes_per_connection();
            let spread = outcome
                .gateways
                .iter()
                .map(|(n, c)| format!("{n}: {c}"))
                .collect::<Vec<_>>()
                .join(", ");
            report.push(
                Row::text(
                    format!("idle WebSockets held ({spread}); gateway RSS per connection",),
                    vec![
                        ("connections".into(), outcome.connections as f64),
                        ("bytes_per_connection".into(), per),
                        ("rss_before_kib".into(), outcome.rss_before_kib as f64),
                        ("rss_after_kib".into(), outcome.rss_after_kib as f64),
                        ("open_secs".into(), outcome.open_secs),
                    ],
                    format!(
                        "{} connections, {:.1} KiB each (RSS {} → {} MiB, opened in {:.1} s)",
                        thousands(outcome.connections as f64),
                        per / 1024.0,
                        outcome.rss_before_kib / 1024,
                        outcome.rss_after_kib / 1024,
                        outcome.open_secs
                    ),
                )
                .target(
                    format!(
                        "{} with < {} KiB each",
                        thousands(TARGET_IDLE_CONNECTIONS as f64),
                        TARGET_IDLE_BYTES / 1024.0
                    ),
                    outcome.connections >= TARGET_IDLE_CONNECTIONS && per < TARGET_IDLE_BYTES,
                ),
            );
        }
    }
    if args.runs(Phase::E2e) {
        println!(
            "end to end: {} sessions, {:?} + {:?}",
            s.sessions, s.warmup, s.measure
        );
        let before = RepairCounters::read(gateway_metrics).await;
        let mut outcome = load::run(endpoint, &spec(args, s, s.sessions, s.measure, false)).await?;
        let after = RepairCounters::read(gateway_metrics).await;
        RepairCounters::note(before, after, "end-to-end run", report);
        let row = Row::rate(
            format!(
                "end-to-end chunks/s to clients via Nginx, {} sessions, demo model at zero delay",
                s.sessions
            ),
            "chunks_per_sec",
            outcome.chunks_per_sec,
            "chunks/s",
        )
        .target(
            format!("≥ {}", thousands(TARGET_E2E_CHUNKS)),
            outcome.chunks_per_sec >= TARGET_E2E_CHUNKS,
        );
        report.push(row);
        report.push(delivered_row(&outcome, "e2e run"));
        report.push(Row::rate(
            "answers completed (e2e run)",
            "turns_per_sec",
            outcome.turns_per_sec,
            "answers/s",
        ));
        if let Some(row) = cpu_row(&outcome, "e2e run") {
            report.push(row);
        }
        if let Some(sum) = outcome.ttft.summary() {
            report.push(Row::latency(
                format!(
                    "time to first chunk during the e2e run ({} sessions, saturated)",
                    s.sessions
                ),
                &sum,
            ));
        }
        if let Some(js) = js_rate {
            let ratio = outcome.chunks_per_sec / js;
            report.push(
                Row::text(
                    "end-to-end ÷ raw JetStream pipelined",
                    vec![("ratio".into(), ratio)],
                    format!("{ratio:.2}"),
                )
                .target(format!("≥ {TARGET_E2E_RATIO}"), ratio >= TARGET_E2E_RATIO),
            );
        }
        check(report, endpoint, args, outcome).await;
    }
    if args.runs(Phase::Ttft) {
        println!("time to first chunk: {} sessions", s.ttft_sessions);
        let mut outcome =
            load::run(endpoint, &spec(args, s, s.ttft_sessions, s.ttft, false)).await?;
        if let Some(sum) = outcome.ttft.summary() {
            let met = sum.p50_ms < TARGET_TTFT_P50_MS;
            report.push(
                Row::latency(
                    format!(
                        "time to first chunk from `chat` sent, zero delay, {} session(s) asking turn after turn",
                        s.ttft_sessions
                    ),
                    &sum,
                )
                .target(format!("p50 < {TARGET_TTFT_P50_MS} ms"), met),
            );
        }
        if let Some(sum) = outcome.accepted.summary() {
            report.push(Row::latency(
                "`chat` sent → `accepted` (gateway: session record, user message, queue)",
                &sum,
            ));
        }
        if let Some(sum) = outcome.first_published.summary() {
            report.push(Row::latency(
                "`chat` sent → worker publishes the first chunk (gateway, queue, worker start)",
                &sum,
            ));
        }
        check(report, endpoint, args, std::mem::take(&mut outcome)).await;
    }
    if args.runs(Phase::Replay) {
        println!("replay of {} events", args.replay_events);
        let session = replay::prepare(endpoint, args.replay_events, args.answer_tokens).await?;
        let mut timings =
            replay::measure(endpoint, &session, args.replay_events, s.replay_samples).await?;
        if let Some(sum) = timings.summary() {
            let met = sum.p99_ms < TARGET_REPLAY_P99_MS;
            report.push(
                Row::latency(
                    format!(
                        "reconnect with after_seq replaying {} events (connect → last event)",
                        args.replay_events
                    ),
                    &sum,
                )
                .target(format!("p99 < {TARGET_REPLAY_P99_MS} ms"), met),
            );
        }
    }
    Ok(js_rate)
}

fn spec(
    args: &BenchArgs,
    s: &Settings,
    sessions: usize,
    measure: Duration,
    stamped_tokens: bool,
) -> LoadSpec {
    LoadSpec {
        sessions,
        warmup: s.warmup,
        measure,
        stagger: if stamped_tokens {
            s.paced_stagger
        } else {
            load::Stagger::default()
        },
        connect_concurrency: args.open_concurrency,
        answer_tokens: args.answer_tokens,
        max_turns: None,
        stamped_tokens,
        extra_client_cpu_per_token: Duration::ZERO,
        trace_tokens: stamped_tokens && args.token_trace_dir.is_some(),
        worker_metrics: Vec::new(),
    }
}

/// Records a run's problems and compares its sessions with the stream.
async fn check(report: &mut Report, endpoint: &Endpoint, args: &BenchArgs, outcome: LoadOutcome) {
    for p in outcome.problems {
        report.problem(p);
    }
    if outcome.reconnects > 0 {
        report.note(format!(
            "{} sockets closed by the server mid-answer were reopened with after_seq",
            outcome.reconnects
        ));
    }
    if outcome.restarts > 0 {
        report.problem(format!(
            "{} answers restarted (a worker lost its job)",
            outcome.restarts
        ));
    }
    for p in load::verify_against_stream(endpoint, &outcome.sessions, args.verify_sessions).await {
        report.problem(p);
    }
}

async fn scaling(
    args: &BenchArgs,
    s: &Settings,
    report: &mut Report,
    endpoint: &Endpoint,
    stack: &mut Stack,
) -> anyhow::Result<()> {
    let mut running = stack.worker_count();
    while running > 0 {
        println!("scaling: {running} workers, {} sessions", s.sessions);
        let outcome = load::run(endpoint, &spec(args, s, s.sessions, s.scaling, false)).await?;
        report.push(Row::rate(
            format!("scaling: {running} worker(s), {} sessions", s.sessions),
            "chunks_per_sec",
            outcome.chunks_per_sec,
            "chunks/s",
        ));
        check(report, endpoint, args, outcome).await;
        running -= 1;
        if running > 0 {
            // Stop the highest-numbered worker gracefully: it holds no job now.
            stack
                .terminate_worker(running)
                .await
                .with_context(|| format!("stopping worker {running}"))?;
        }
    }
    Ok(())
}

fn gateway_metrics_urls(stack: &Stack) -> Vec<String> {
    (0..stack.gateway_count())
        .map(|i| format!("{}/metrics", stack.gateway_url(i)))
        .collect()
}

/// How often the gateways had to read the stream instead of forwarding a
/// live event, summed over the gateways: what a load cost beyond the
/// fan-out.
#[derive(Debug, Default, Clone, Copy)]
struct RepairCounters {
    gap_repairs: f64,
    catch_ups: f64,
    replayed_events: f64,
    slow_closes: f64,
}

impl RepairCounters {
    async fn read(urls: &[String]) -> Option<Self> {
        let mut sum = Self::default();
        for text in super::scrape::every(urls).await? {
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            sum.gap_repairs += value("chat_gateway_gap_repairs_total");
            sum.catch_ups += value("chat_gateway_catch_ups_total");
            sum.replayed_events += value("chat_gateway_replayed_events_total");
            sum.slow_closes += value("chat_gateway_slow_client_closes_total");
        }
        Some(sum)
    }

    /// Notes what changed from `before` to `after` (when both were read).
    fn note(before: Option<Self>, after: Option<Self>, run: &str, report: &mut Report) {
        let (Some(after), Some(before)) = (after, before) else {
            return;
        };
        report.note(format!(
            "{run}: gateways filled {} gaps, caught {} lagging sockets up, read {} events from the stream, closed {} stuck sockets",
            thousands(after.gap_repairs - before.gap_repairs),
            thousands(after.catch_ups - before.catch_ups),
            thousands(after.replayed_events - before.replayed_events),
            thousands(after.slow_closes - before.slow_closes),
        ));
    }
}

/// What reached the clients in the measured window: tokens, text bytes and
/// chunks per second (chunk counts change with the coalescing window; the
/// tokens and bytes do not), and the CPU of every process per token.
fn delivered_row(outcome: &LoadOutcome, run: &str) -> Row {
    let tokens_per_chunk = outcome.tokens_per_sec / outcome.chunks_per_sec.max(f64::MIN_POSITIVE);
    let cpu_us_per_token =
        outcome.cost.cpu.values().sum::<f64>() * 1e6 / outcome.measured_tokens.max(1) as f64;
    Row::text(
        format!("delivered to clients ({run})"),
        vec![
            ("tokens_per_sec".into(), outcome.tokens_per_sec),
            ("bytes_per_sec".into(), outcome.bytes_per_sec),
            ("chunks_per_sec".into(), outcome.chunks_per_sec),
            ("tokens_per_chunk".into(), tokens_per_chunk),
            ("cpu_us_per_token".into(), cpu_us_per_token),
        ],
        format!(
            "{} tokens/s, {} KiB/s of text, {} chunks/s ({:.1} tokens each); CPU {:.1} µs per token",
            thousands(outcome.tokens_per_sec),
            thousands(outcome.bytes_per_sec / 1024.0),
            thousands(outcome.chunks_per_sec),
            tokens_per_chunk,
            cpu_us_per_token
        ),
    )
}
