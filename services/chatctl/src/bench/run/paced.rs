//! The paced phase: streams at a model's pace, each token's latency from
//! the model yielding it to the client receiving it, on a stack with the
//! workers' window (adaptive by default) and, on request, again with a fixed
//! window for the comparison.

use anyhow::Context;
use stack::{Stack, StackOptions};

use super::super::load;
use super::super::model_pacing::{self, ModelPacing};
use super::super::raw_nats::{self, NatsTarget, PacedPublishing};
use super::super::report::{millis, thousands, Report, Row};
use super::super::socket::Endpoint;
use super::super::token_trace::TokenTrace;
use super::super::{comparison, sse, Phase};
use super::{
    check, cpu_row, cpu_token_row, delivered_row, gateway_metrics_urls, paced_env, spec, BenchArgs,
    RepairCounters, Settings,
};

/// How long the demo model runs alone after each paced load.
const MODEL_PACING_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

const TARGET_LATENCY_P99_MS: f64 = 5.0;
const TARGET_LATENCY_AT_STREAMS: usize = 1_000;
/// Token latency p99 (model yields → client receives), by paced streams.
const TARGET_TOKEN_LATENCY_P99_MS: [(usize, f64); 2] = [(1_000, 250.0), (2_000, 500.0)];

/// Starts the paced stack(s) and runs the paced loads on each.
pub(super) async fn own_stacks(
    args: &BenchArgs,
    s: &Settings,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut windows = vec![PacedWindow::AsConfigured];
    if args.paced_fixed_window_too {
        windows.push(PacedWindow::Fixed);
    }
    for window in windows {
        println!(
            "starting the paced stack: {} tokens/s per stream{}",
            args.paced_tokens_per_sec,
            window.label()
        );
        let mut env = paced_env(args, s);
        if window == PacedWindow::Fixed {
            // Later entries win: the bound at the base window fixes it.
            env.push(("CHUNK_WINDOW_MAX_MS".into(), "0".into()));
        }
        let stack = Stack::start(StackOptions {
            gateways: args.gateways,
            workers: args.workers,
            env,
            nginx: true,
            ..Default::default()
        })
        .await
        .context("starting the paced stack")?;
        let endpoint = Endpoint::parse(&stack.nginx_url())?;
        let metrics = StackMetrics {
            gateways: gateway_metrics_urls(&stack),
            workers: (0..stack.worker_count())
                .map(|i| format!("{}/metrics", stack.worker_metrics_url(i)))
                .collect(),
        };
        let access = stack.nats_security().access(protocol::access::Role::Ops);
        let nats = NatsTarget {
            url: &stack.nats_url(),
            access: &access,
        };
        paced(args, s, report, &endpoint, &metrics, nats, window).await?;
    }
    Ok(())
}

/// The coalescing window of a paced stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PacedWindow {
    /// The workers' settings (adaptive by default).
    AsConfigured,
    /// A fixed window, as before it adapted (`--paced-fixed-window-too`).
    Fixed,
}

impl PacedWindow {
    /// What the rows of this stack add to their names.
    fn label(self) -> &'static str {
        match self {
            PacedWindow::AsConfigured => "",
            PacedWindow::Fixed => ", fixed window",
        }
    }
}

/// Writes a run's tokens to `--token-trace-dir` (nothing without it) and
/// notes where in the answers its tail sat.
fn trace_run(
    args: &BenchArgs,
    report: &mut Report,
    trace: &TokenTrace,
    streams: usize,
    side: &str,
    run: usize,
) -> anyhow::Result<()> {
    let Some(dir) = &args.token_trace_dir else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{streams}-{side}-{run}.tsv"));
    trace
        .write_tsv(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(early) = trace.tail_in_early_chunks() {
        report.note(format!(
            "{streams} paced streams, {side} run {run}: the answers' 2nd to 4th chunks carried \
             {:.0} % of the tokens over its p99 and {:.0} % of all its tokens ({})",
            early.of_tail * 100.0,
            early.of_tokens * 100.0,
            path.display()
        ));
    }
    Ok(())
}

async fn paced(
    args: &BenchArgs,
    s: &Settings,
    report: &mut Report,
    endpoint: &Endpoint,
    metrics: &StackMetrics,
    nats: NatsTarget<'_>,
    window: PacedWindow,
) -> anyhow::Result<()> {
    let label = window.label();
    for &streams in &s.paced_loads {
        println!(
            "paced: {streams} streams at {} tokens/s{label}",
            args.paced_tokens_per_sec
        );
        let run = format!("{streams} paced streams{label}");
        // Every run of this load, the workers' acks read around its window.
        let load_spec = || load::LoadSpec {
            worker_metrics: metrics.workers.clone(),
            ..spec(args, s, streams, s.paced, true)
        };
        let before = RepairCounters::read(&metrics.gateways).await;
        let mut outcome = load::run(endpoint, &load_spec()).await?;
        let after = RepairCounters::read(&metrics.gateways).await;
        RepairCounters::note(before, after, &run, report);
        let websocket = match window {
            PacedWindow::AsConfigured => "websocket",
            PacedWindow::Fixed => "websocket-fixed-window",
        };
        trace_run(args, report, &outcome.token_trace, streams, websocket, 1)?;
        if let Some(sum) = outcome.token_latency.summary() {
            let mut row = Row::latency(
                format!(
                    "token latency model yields → client receives, {streams} streams at {} tokens/s{label}",
                    args.paced_tokens_per_sec
                ),
                &sum,
            );
            row.values.push(("streams".into(), streams as f64));
            row.values.push((
                "fixed_window".into(),
                f64::from(u8::from(window == PacedWindow::Fixed)),
            ));
            if let Some((_, target)) = TARGET_TOKEN_LATENCY_P99_MS
                .iter()
                .find(|(at, _)| *at == streams)
            {
                let met = sum.p99_ms < *target;
                let by = if met {
                    String::new()
                } else {
                    format!(" (missed by {} ms)", millis(sum.p99_ms - target))
                };
                row = row.target(format!("p99 < {target} ms{by}"), met);
            }
            report.push(row);
        }
        report.push(delivered_row(&outcome, &run));
        if let Some(sum) = outcome.chunk_latency.summary() {
            let mut row = Row::latency(
                format!(
                    "chunk latency worker publish → client, {streams} streams at {} tokens/s ({} chunks/s){label}",
                    args.paced_tokens_per_sec,
                    thousands(outcome.chunks_per_sec)
                ),
                &sum,
            );
            row.values
                .push(("chunks_per_sec".into(), outcome.chunks_per_sec));
            if streams == TARGET_LATENCY_AT_STREAMS && window == PacedWindow::AsConfigured {
                row = row.target(
                    format!("p99 < {TARGET_LATENCY_P99_MS} ms at 1,000 streams"),
                    sum.p99_ms < TARGET_LATENCY_P99_MS,
                );
            }
            report.push(row);
        }
        if let Some(row) = cpu_row(&outcome, &run) {
            report.push(row);
        }
        if let Some(row) = cpu_token_row(&outcome, &run) {
            report.push(row);
        }
        if window == PacedWindow::AsConfigured {
            let (tps, answer_tokens) = (args.paced_tokens_per_sec, args.answer_tokens);
            println!("the demo model alone: {streams} streams at {tps} tokens/s, no NATS");
            let pacing = tokio::task::spawn_blocking(move || {
                model_pacing::measure(streams, tps, answer_tokens, MODEL_PACING_WINDOW)
            })
            .await??;
            if let Some(row) = model_pacing_row(&outcome, &pacing, &run) {
                report.push(row);
            }
            if outcome.chunks_per_sec > 0.0 {
                push_raw_paced_row(args, report, &nats, &outcome, streams, &run).await?;
            }
        }
        if args.runs(Phase::Sse) && window == PacedWindow::AsConfigured {
            let mut ws = comparison::Pooled::default();
            ws.add(comparison::SideRun::from(&outcome));
            let mut over_sse = comparison::Pooled::default();
            // Pair 1 is the run above and an SSE run; then SSE first, then
            // the WebSocket first again, and so on.
            for pair in 1..=args.sse_pairs.max(1) {
                let order: &[Side] = match (pair, pair % 2) {
                    (1, _) => &[Side::Sse],
                    (_, 0) => &[Side::Sse, Side::WebSocket],
                    _ => &[Side::WebSocket, Side::Sse],
                };
                for side in order {
                    let load = load_spec();
                    match (side, args.sse_control_ns) {
                        (Side::Sse, Some(ns)) => {
                            println!("sse control: the same {streams} streams over the WebSocket, its client spending {ns} ns more per token (pair {pair})");
                            let taxed = load::LoadSpec {
                                extra_client_cpu_per_token: std::time::Duration::from_nanos(ns),
                                ..load
                            };
                            let control = load::run(endpoint, &taxed).await?;
                            trace_run(
                                args,
                                report,
                                &control.token_trace,
                                streams,
                                "control",
                                pair,
                            )?;
                            over_sse.add(comparison::SideRun::from(&control));
                            check(report, endpoint, args, control).await;
                        }
                        (Side::Sse, None) => {
                            println!("sse: the same {streams} streams through POST /api/ui/chat (pair {pair})");
                            let before = RepairCounters::read(&metrics.gateways).await;
                            let sse = sse::run(endpoint, &load).await?;
                            let after = RepairCounters::read(&metrics.gateways).await;
                            RepairCounters::note(
                                before,
                                after,
                                &format!("{run} over SSE (pair {pair})"),
                                report,
                            );
                            over_sse.add(comparison::SideRun::from(&sse));
                            trace_run(args, report, &sse.token_trace, streams, "sse", pair)?;
                            report.note(format!(
                                "{run} over SSE (pair {pair}): {} answers on {} client connections",
                                sse.answers.len(),
                                sse.connections_opened
                            ));
                            let mut problems = sse.problems;
                            problems.extend(
                                sse::verify(endpoint, &sse.answers, args.verify_sessions).await,
                            );
                            for p in problems {
                                report.problem(p);
                            }
                        }
                        (Side::WebSocket, _) => {
                            println!("sse: the same {streams} streams over the WebSocket again (pair {pair})");
                            let again = load::run(endpoint, &load).await?;
                            trace_run(
                                args,
                                report,
                                &again.token_trace,
                                streams,
                                "websocket",
                                pair,
                            )?;
                            ws.add(comparison::SideRun::from(&again));
                            check(report, endpoint, args, again).await;
                        }
                    }
                }
            }
            let side = match args.sse_control_ns {
                Some(ns) => comparison::Compared::Control { extra_ns: ns },
                None => comparison::Compared::Sse,
            };
            comparison::compare(report, &mut ws, &mut over_sse, &run, side);
        }
        check(report, endpoint, args, std::mem::take(&mut outcome)).await;
    }
    Ok(())
}

/// Where the paced stack's processes serve their metrics.
struct StackMetrics {
    gateways: Vec<String>,
    workers: Vec<String>,
}

/// A side of the SSE comparison.
enum Side {
    WebSocket,
    Sse,
}

/// The demo model's own CPU per token beside the workers' in the same load:
/// the part of the workers' figure that is the load generator.
fn model_pacing_row(outcome: &load::LoadOutcome, pacing: &ModelPacing, run: &str) -> Option<Row> {
    let model_us = pacing.us_per_token()?;
    let mut values = vec![("model_us_per_token".to_string(), model_us)];
    let mut text = format!(
        "{model_us:.1} µs per token ({} tokens in {} s, the model alone in one process)",
        thousands(pacing.tokens as f64),
        MODEL_PACING_WINDOW.as_secs()
    );
    let worker_secs: f64 = outcome
        .cost
        .cpu
        .iter()
        .filter(|(name, _)| name.starts_with("worker"))
        .map(|(_, secs)| secs)
        .sum();
    if outcome.measured_tokens > 0 && worker_secs > 0.0 {
        let worker_us = worker_secs * 1e6 / outcome.measured_tokens as f64;
        values.push(("worker_us_per_token".into(), worker_us));
        values.push((
            "worker_less_model_us_per_token".into(),
            worker_us - model_us,
        ));
        text.push_str(&format!(
            "; the workers {worker_us:.1}, of which the system's {:.1}",
            worker_us - model_us
        ));
    }
    Some(Row::text(
        format!("CPU per token of the demo model's pacing ({run}), µs"),
        values,
        text,
    ))
}

/// The tick the raw paced publishes are gathered on in their "sent
/// together" variants: a token's own pace at 50 tokens/s, so the latency it
/// would add to a chunk is as long again as the model's.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

/// nats-server's CPU per message for plain JetStream publishes at the rate
/// and spread of the paced run's chunks, unbatched as they are, without and
/// with a republish to a subscriber: what storing (and republishing) one
/// message at that pace costs the server by itself, beside what a chunk of
/// ours cost it in the run. Then the republished ones unacked, gathered
/// every [`GATHER`], and both: what acking many messages at once (as
/// fast-ingest batches do) and sending them in bunches would save it.
async fn push_raw_paced_row(
    args: &BenchArgs,
    report: &mut Report,
    nats: &NatsTarget<'_>,
    outcome: &load::LoadOutcome,
    streams: usize,
    run: &str,
) -> anyhow::Result<()> {
    let mut load = PacedPublishing::unbatched(
        streams,
        outcome.chunks_per_sec,
        args.workers.max(1),
        args.payload_bytes,
    );
    println!(
        "raw JetStream at the paced run's rate: {} msg/s on {streams} subjects, without and with republish, unacked, gathered",
        thousands(load.per_sec)
    );
    let plain = raw_nats::jetstream_paced(nats, load, MODEL_PACING_WINDOW).await?;
    load.republish = true;
    let republished = raw_nats::jetstream_paced(nats, load, MODEL_PACING_WINDOW).await?;
    let unacked = raw_nats::jetstream_paced(
        nats,
        PacedPublishing {
            acked: false,
            ..load
        },
        MODEL_PACING_WINDOW,
    )
    .await?;
    let gathered = raw_nats::jetstream_paced(
        nats,
        PacedPublishing {
            gather: GATHER,
            ..load
        },
        MODEL_PACING_WINDOW,
    )
    .await?;
    let gathered_unacked = raw_nats::jetstream_paced(
        nats,
        PacedPublishing {
            gather: GATHER,
            acked: false,
            ..load
        },
        MODEL_PACING_WINDOW,
    )
    .await?;
    let mut values = vec![
        ("plain_us".to_string(), plain.nats_server_us_per_message),
        (
            "republish_us".into(),
            republished.nats_server_us_per_message,
        ),
        (
            "republish_unacked_us".into(),
            unacked.nats_server_us_per_message,
        ),
        (
            "republish_gathered_us".into(),
            gathered.nats_server_us_per_message,
        ),
        (
            "republish_gathered_unacked_us".into(),
            gathered_unacked.nats_server_us_per_message,
        ),
        ("gather_ms".into(), GATHER.as_secs_f64() * 1e3),
        ("msgs_per_sec".into(), load.per_sec),
    ];
    let mut text = format!(
        "plain {:.1}, with republish to a subscriber {:.1}, the same unacked {:.1}, sent together every {} ms {:.1}, both {:.1} ({} msg/s on {streams} subjects, {} publishers)",
        plain.nats_server_us_per_message,
        republished.nats_server_us_per_message,
        unacked.nats_server_us_per_message,
        GATHER.as_millis(),
        gathered.nats_server_us_per_message,
        gathered_unacked.nats_server_us_per_message,
        thousands(load.per_sec),
        load.publishers
    );
    if let (Some(secs), true) = (
        outcome.cost.cpu.get("nats-server"),
        outcome.measured_chunks > 0,
    ) {
        let ours = secs * 1e6 / outcome.measured_chunks as f64;
        values.push(("ours_us".into(), ours));
        text.push_str(&format!(
            "; a chunk of ours {ours:.1} ({:.1} × the republished raw message)",
            ours / republished
                .nats_server_us_per_message
                .max(f64::MIN_POSITIVE)
        ));
    }
    report.push(Row::text(
        format!("nats-server CPU per JetStream publish, unbatched at the rate of the chunks ({run}), µs"),
        values,
        text,
    ));
    Ok(())
}
