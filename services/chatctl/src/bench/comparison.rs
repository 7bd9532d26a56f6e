//! The SSE scenario's verdict: the WebSocket and the other side (SSE, or a
//! control) on the same stack, each side's runs pooled, compared on token
//! latency p99 and CPU per token against the 15 % target, and on what a
//! token waits on beside the CPU.

use std::collections::BTreeMap;

use super::cpu::RunQueue;
use super::load::LoadOutcome;
use super::publish_acks::PublishAcks;
use super::report::{Report, Row};
use super::sse::SseOutcome;
use super::stats::Samples;
use super::window::WindowCost;

/// One side of the comparison (the WebSocket or SSE), its runs pooled:
/// CPU and tokens summed, latency samples merged, and each run's own CPU
/// per token kept to show the spread.
#[derive(Debug, Default)]
pub struct Pooled {
    cpu: BTreeMap<String, f64>,
    tokens: u64,
    latency: Samples,
    /// The tokens of each answer's first chunk again.
    first_chunk_latency: Samples,
    /// CPU per token of each run (all processes), in the order run.
    per_run: Vec<f64>,
    /// The components' waits for a core.
    run_queue: BTreeMap<String, RunQueue>,
    /// The workers' publish → ack times; `None` once a run lacked them.
    publish_acks: Option<PublishAcks>,
    /// TCP connections opened on the machine; `None` once a run lacked them.
    connections_opened: Option<u64>,
}

/// One run of a side, as the comparison pools it.
pub struct SideRun<'a> {
    pub cost: &'a WindowCost,
    pub tokens: u64,
    pub latency: &'a Samples,
    pub first_chunk_latency: &'a Samples,
}

/// A run of either transport: their outcomes name the pooled figures alike.
macro_rules! side_run_from {
    ($outcome:ty) => {
        impl<'a> From<&'a $outcome> for SideRun<'a> {
            fn from(run: &'a $outcome) -> Self {
                Self {
                    cost: &run.cost,
                    tokens: run.measured_tokens,
                    latency: &run.token_latency,
                    first_chunk_latency: &run.first_chunk_token_latency,
                }
            }
        }
    };
}
side_run_from!(LoadOutcome);
side_run_from!(SseOutcome);

impl Pooled {
    pub fn add(&mut self, run: SideRun<'_>) {
        let cost = run.cost;
        for (name, secs) in &cost.cpu {
            *self.cpu.entry(name.clone()).or_default() += secs;
        }
        for (name, waited) in &cost.run_queue {
            self.run_queue.entry(name.clone()).or_default().add(*waited);
        }
        let first = self.per_run.is_empty();
        self.publish_acks = all_or_none(first, self.publish_acks, cost.publish_acks, |mut a, b| {
            a.add(b);
            a
        });
        self.connections_opened = all_or_none(
            first,
            self.connections_opened,
            cost.connections_opened,
            |a, b| a + b,
        );
        self.tokens += run.tokens;
        self.latency.extend(run.latency.clone());
        self.first_chunk_latency
            .extend(run.first_chunk_latency.clone());
        self.per_run
            .push(cpu_per_token(&cost.cpu, run.tokens, None));
    }

    fn per_token(&self, only: Option<&str>) -> f64 {
        cpu_per_token(&self.cpu, self.tokens, only)
    }
}

/// A figure pooled over runs, or `None` once a run lacked it (a sum over
/// some of the runs would mislead).
fn all_or_none<T>(first: bool, pooled: Option<T>, run: Option<T>, add: fn(T, T) -> T) -> Option<T> {
    if first {
        return run;
    }
    Some(add(pooled?, run?))
}

/// The processes the client's transport does not reach directly (the
/// stored events and their delivery to the gateways are the same): they
/// move between the sides with the machine's drift, and with the workers'
/// window, which gathers more tokens per chunk when the path to NATS is
/// slower (fewer publishes per token).
const TRANSPORT_BLIND: [&str; 2] = ["nats-server", "worker"];

/// µs of CPU per token, of every process or of `only`.
fn cpu_per_token(cpu: &BTreeMap<String, f64>, tokens: u64, only: Option<&str>) -> f64 {
    let secs: f64 = cpu
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| name.as_str() == o))
        .map(|(_, s)| s)
        .sum();
    secs * 1e6 / tokens.max(1) as f64
}

/// What the second side of a comparison ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compared {
    /// The AI SDK's SSE, through `POST /api/ui/chat`.
    Sse,
    /// The WebSocket again, its client spending `extra_ns` more CPU per
    /// token (`--sse-control-ns`): no target, a measure of the comparison.
    Control { extra_ns: u64 },
}

impl Compared {
    /// How the rows name the second side.
    fn name(self) -> String {
        match self {
            Compared::Sse => "SSE".into(),
            Compared::Control { extra_ns } => {
                format!("control (WebSocket, client +{extra_ns} ns per token)")
            }
        }
    }
}

/// Rows comparing SSE with the WebSocket on the same stack, each side's
/// runs pooled: token latency p99 and CPU per token, each with the 15 %
/// target, and every pair's own CPU ratio beside it. For a control, the
/// same rows without a target.
pub fn compare(report: &mut Report, ws: &mut Pooled, sse: &mut Pooled, run: &str, side: Compared) {
    let runs = ws.per_run.len().min(sse.per_run.len());
    let name = side.name();
    let targeted = side == Compared::Sse;
    let ws_p99 = ws.latency.summary().map(|s| s.p99_ms);
    if let Some(sum) = sse.latency.summary() {
        let mut row = Row::latency(
            format!("{name} token latency model yields → client receives, {run} ({runs} runs of each pooled)"),
            &sum,
        );
        if let Some(ws_p99) = ws_p99 {
            let ratio = sum.p99_ms / ws_p99.max(f64::MIN_POSITIVE);
            row.values.push(("ws_p99_ms".into(), ws_p99));
            row.values.push(("p99_vs_ws".into(), ratio));
            let verdict = format!(
                "p99 within 15 % of the WebSocket's ({ws_p99:.1} ms): {:.0} %",
                ratio * 100.0
            );
            if targeted {
                row = row.target(verdict, ratio <= 1.15);
            } else {
                row.display = format!("{} · {verdict}", row.display);
            }
        }
        // Where a difference sits: the tokens an answer's first chunk
        // carries wait for the answer to begin, the others do not.
        let (first, ws_first) = (
            sse.first_chunk_latency.summary(),
            ws.first_chunk_latency.summary(),
        );
        if let (Some(first), Some(ws_first)) = (first, ws_first) {
            row.values.push(("first_chunk_p99_ms".into(), first.p99_ms));
            row.values
                .push(("ws_first_chunk_p99_ms".into(), ws_first.p99_ms));
            row.values.push((
                "first_chunk_share".into(),
                first.count as f64 / sum.count.max(1) as f64,
            ));
            row.display = format!(
                "{} · tokens of answers' first chunks: p99 {:.1} ms (WebSocket {:.1} ms)",
                row.display, first.p99_ms, ws_first.p99_ms
            );
        }
        report.push(row);
    }
    let (ws_all, sse_all) = (ws.per_token(None), sse.per_token(None));
    let (ws_gw, sse_gw) = (
        ws.per_token(Some("gateway")),
        sse.per_token(Some("gateway")),
    );
    let ratio = sse_all / ws_all.max(f64::MIN_POSITIVE);
    let blind = |side: &Pooled| -> f64 {
        TRANSPORT_BLIND
            .iter()
            .map(|name| side.per_token(Some(name)))
            .sum()
    };
    let drift = blind(sse) / blind(ws).max(f64::MIN_POSITIVE);
    let pair_ratios: Vec<f64> = ws
        .per_run
        .iter()
        .zip(&sse.per_run)
        .map(|(w, s)| s / w.max(f64::MIN_POSITIVE))
        .collect();
    let pairs = pair_ratios
        .iter()
        .map(|r| format!("{:.0} %", r * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    let mut values = vec![
        ("sse_cpu_us_per_token".into(), sse_all),
        ("ws_cpu_us_per_token".into(), ws_all),
        ("sse_gateway_cpu_us_per_token".into(), sse_gw),
        ("ws_gateway_cpu_us_per_token".into(), ws_gw),
        ("sse_tokens".into(), sse.tokens as f64),
        ("cpu_vs_ws".into(), ratio),
        ("transport_blind_vs_ws".into(), drift),
    ];
    values.extend(
        pair_ratios
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("pair_{}_cpu_vs_ws", i + 1), *r)),
    );
    // Process by process, to see where a difference sits.
    let processes: std::collections::BTreeSet<&String> =
        ws.cpu.keys().chain(sse.cpu.keys()).collect();
    for name in processes {
        values.push((format!("ws_{name}_us_per_token"), ws.per_token(Some(name))));
        values.push((
            format!("sse_{name}_us_per_token"),
            sse.per_token(Some(name)),
        ));
    }
    let row = Row::text(
        format!("{name} vs WebSocket CPU per token, {run}"),
        values,
        format!(
            "{name} {sse_all:.1} µs per token in all (gateways {sse_gw:.1}), WebSocket {ws_all:.1} (gateways {ws_gw:.1}); {runs} runs of each pooled, pair by pair {pairs}; nats-server and workers {:.0} % (the transport reaches them only through the workers' window: more tokens per chunk cost them less per token)",
            drift * 100.0
        ),
    );
    let verdict = format!("within 15 %: {:.0} %", ratio * 100.0);
    report.push(if targeted {
        row.target(verdict, ratio <= 1.15)
    } else {
        row
    });
    if let Some(row) = waits_row(ws, sse, run, &name) {
        report.push(row);
    }
}

/// What a token waits on besides CPU, side by side: the workers' mean
/// publish → ack (their adaptive window is a multiple of it) and each
/// component's mean wait for a core each time one of its threads got one.
fn waits_row(ws: &Pooled, other: &Pooled, run: &str, name: &str) -> Option<Row> {
    let mut values = Vec::new();
    let mut parts = Vec::new();
    if let (Some(ws_ms), Some(other_ms)) = (
        ws.publish_acks.and_then(|a| a.mean_ms()),
        other.publish_acks.and_then(|a| a.mean_ms()),
    ) {
        values.push(("ws_publish_ack_ms".to_string(), ws_ms));
        values.push(("other_publish_ack_ms".to_string(), other_ms));
        parts.push(format!(
            "the workers' publish → ack {ws_ms:.1} → {other_ms:.1} ms"
        ));
    }
    if let (Some(ws_opened), Some(other_opened)) = (ws.connections_opened, other.connections_opened)
    {
        // Per 1,000 tokens: the sides deliver alike, but not exactly.
        let per_kilotoken = |opened: u64, tokens: u64| opened as f64 * 1e3 / tokens.max(1) as f64;
        let (ws_rate, other_rate) = (
            per_kilotoken(ws_opened, ws.tokens),
            per_kilotoken(other_opened, other.tokens),
        );
        values.push(("ws_connections_opened_per_1k_tokens".to_string(), ws_rate));
        values.push((
            "other_connections_opened_per_1k_tokens".to_string(),
            other_rate,
        ));
        parts.push(format!(
            "TCP connections opened per 1,000 tokens {ws_rate:.2} → {other_rate:.2}"
        ));
    }
    let mut waits = Vec::new();
    for (component, ws_waited) in &ws.run_queue {
        let Some(other_waited) = other.run_queue.get(component) else {
            continue;
        };
        let (Some(ws_us), Some(other_us)) = (ws_waited.us_per_run(), other_waited.us_per_run())
        else {
            continue;
        };
        values.push((format!("ws_{component}_wait_us_per_run"), ws_us));
        values.push((format!("other_{component}_wait_us_per_run"), other_us));
        // How often its threads were given a core, per token: more turns
        // at the same CPU is more waking up.
        values.push((
            format!("ws_{component}_runs_per_token"),
            ws_waited.runs as f64 / ws.tokens.max(1) as f64,
        ));
        values.push((
            format!("other_{component}_runs_per_token"),
            other_waited.runs as f64 / other.tokens.max(1) as f64,
        ));
        waits.push(format!("{component} {ws_us:.0} → {other_us:.0}"));
    }
    if !waits.is_empty() {
        parts.push(format!(
            "a thread's wait for a core each time it got one, µs: {}",
            waits.join(", ")
        ));
    }
    (!values.is_empty()).then(|| {
        Row::text(
            format!("waits beside the CPU, WebSocket → {name}, {run}"),
            values,
            parts.join("; "),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(gateway: f64, rest: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("gateway".to_string(), gateway),
            ("nats-server".to_string(), rest),
        ])
    }

    fn cpu_with_worker(gateway: f64, nats: f64, worker: f64) -> BTreeMap<String, f64> {
        let mut all = cpu(gateway, nats);
        all.insert("worker".to_string(), worker);
        all
    }

    /// A run of 10,000 tokens, each `ms` late.
    fn add(side: &mut Pooled, cpu: BTreeMap<String, f64>, ms: u64) {
        let latency = latency(ms);
        let cost = WindowCost {
            cpu,
            ..WindowCost::default()
        };
        side.add(SideRun {
            cost: &cost,
            tokens: 10_000,
            latency: &latency,
            first_chunk_latency: &latency,
        });
    }

    fn latency(ms: u64) -> Samples {
        let mut samples = Samples::default();
        for _ in 0..100 {
            samples.push_micros(ms * 1000);
        }
        samples
    }

    /// One run of each side (its CPU, and every token's latency in ms),
    /// compared.
    fn one_pair(
        ws: (BTreeMap<String, f64>, u64),
        other: (BTreeMap<String, f64>, u64),
        run: &str,
        side: Compared,
    ) -> Report {
        let (mut ws_side, mut other_side) = (Pooled::default(), Pooled::default());
        add(&mut ws_side, ws.0, ws.1);
        add(&mut other_side, other.0, other.1);
        let mut report = Report::default();
        compare(&mut report, &mut ws_side, &mut other_side, run, side);
        report
    }

    fn row<'r>(report: &'r Report, starts: &str) -> &'r Row {
        report
            .rows
            .iter()
            .find(|r| r.name.starts_with(starts))
            .unwrap_or_else(|| panic!("no row {starts}: {report:?}"))
    }

    #[test]
    fn the_waits_beside_the_cpu_are_pooled_side_by_side() {
        let run = |side: &mut Pooled, waited_secs: f64, acks: Option<(f64, f64)>, opened| {
            let latency = latency(20);
            let cost = WindowCost {
                cpu: cpu(1.0, 3.0),
                run_queue: BTreeMap::from([(
                    "gateway".to_string(),
                    RunQueue {
                        waited_secs,
                        runs: 1_000,
                    },
                )]),
                publish_acks: acks.map(|(secs, count)| PublishAcks { secs, count }),
                connections_opened: opened,
            };
            side.add(SideRun {
                cost: &cost,
                tokens: 10_000,
                latency: &latency,
                first_chunk_latency: &latency,
            });
        };
        let (mut ws, mut sse) = (Pooled::default(), Pooled::default());
        run(&mut ws, 0.3, Some((1.0, 100.0)), Some(0));
        run(&mut sse, 0.5, Some((2.0, 100.0)), Some(30));
        run(&mut sse, 0.7, Some((1.0, 100.0)), Some(10));
        run(&mut ws, 0.5, Some((1.0, 100.0)), Some(2));
        let compared = |ws: &mut Pooled, sse: &mut Pooled| {
            let mut report = Report::default();
            compare(&mut report, ws, sse, "1000 paced streams", Compared::Sse);
            report
        };
        let report = compared(&mut ws, &mut sse);
        let waits = row(
            &report,
            "waits beside the CPU, WebSocket → SSE, 1000 paced streams",
        );
        assert_eq!(waits.value("ws_publish_ack_ms"), Some(10.0));
        assert_eq!(waits.value("other_publish_ack_ms"), Some(15.0));
        assert_eq!(waits.value("ws_gateway_wait_us_per_run"), Some(400.0));
        assert_eq!(waits.value("other_gateway_wait_us_per_run"), Some(600.0));
        // 2,000 turns on a core over 20,000 tokens on each side.
        assert_eq!(waits.value("ws_gateway_runs_per_token"), Some(0.1));
        assert_eq!(waits.value("other_gateway_runs_per_token"), Some(0.1));
        // 2 and 40 connections over 20,000 tokens.
        assert_eq!(
            waits.value("ws_connections_opened_per_1k_tokens"),
            Some(0.1)
        );
        assert_eq!(
            waits.value("other_connections_opened_per_1k_tokens"),
            Some(2.0)
        );
        assert!(waits.display.contains("0.10 → 2.00"), "{}", waits.display);
        assert_eq!(waits.met, None);

        // A run whose workers (or the kernel's TCP counters) could not be
        // read leaves no such figure.
        run(&mut sse, 0.5, None, None);
        let report = compared(&mut ws, &mut sse);
        let waits = row(&report, "waits beside the CPU");
        assert_eq!(waits.value("other_publish_ack_ms"), None);
        assert_eq!(waits.value("other_connections_opened_per_1k_tokens"), None);
        assert!(waits.value("other_gateway_wait_us_per_run").is_some());
    }

    #[test]
    fn each_side_is_pooled_over_its_runs_and_every_pair_is_shown() {
        let (mut ws, mut sse) = (Pooled::default(), Pooled::default());
        // Pair 1: SSE 125 % of the WebSocket; pair 2: 75 %. Pooled: even.
        add(&mut ws, cpu(1.0, 3.0), 20);
        add(&mut sse, cpu(1.5, 3.5), 21);
        add(&mut sse, cpu(1.0, 2.0), 22);
        add(&mut ws, cpu(1.0, 3.0), 20);
        let mut report = Report::default();
        compare(
            &mut report,
            &mut ws,
            &mut sse,
            "10 paced streams",
            Compared::Sse,
        );

        let cpu_row = row(&report, "SSE vs WebSocket CPU per token, 10 paced streams");
        assert_eq!(cpu_row.value("ws_cpu_us_per_token"), Some(400.0));
        assert_eq!(cpu_row.value("sse_cpu_us_per_token"), Some(400.0));
        assert_eq!(cpu_row.value("sse_gateway_cpu_us_per_token"), Some(125.0));
        assert_eq!(cpu_row.value("cpu_vs_ws"), Some(1.0));
        assert_eq!(cpu_row.value("pair_1_cpu_vs_ws"), Some(1.25));
        assert_eq!(cpu_row.value("pair_2_cpu_vs_ws"), Some(0.75));
        assert_eq!(cpu_row.met, Some(true));

        let latency_row = row(&report, "SSE token latency");
        assert_eq!(latency_row.value("ws_p99_ms"), Some(20.0));
        assert_eq!(latency_row.value("p99_vs_ws"), Some(1.1));
        assert_eq!(latency_row.met, Some(true));

        // One pair only, SSE 25 % dearer: the target is missed.
        let report = one_pair(
            (cpu(1.0, 3.0), 20),
            (cpu(1.5, 3.5), 30),
            "10 paced streams",
            Compared::Sse,
        );
        assert_eq!(row(&report, "SSE vs WebSocket").met, Some(false));
        assert_eq!(row(&report, "SSE token latency").met, Some(false));
    }

    #[test]
    fn a_control_is_named_as_one_and_sets_no_target() {
        let report = one_pair(
            (cpu(1.0, 3.0), 20),
            (cpu(1.0, 3.5), 30),
            "1000 paced streams",
            Compared::Control { extra_ns: 700 },
        );
        let latency_row = row(
            &report,
            "control (WebSocket, client +700 ns per token) token latency",
        );
        assert_eq!(latency_row.value("p99_vs_ws"), Some(1.5));
        assert_eq!(latency_row.value("first_chunk_p99_ms"), Some(30.0));
        assert_eq!(latency_row.value("ws_first_chunk_p99_ms"), Some(20.0));
        assert_eq!((latency_row.met, &latency_row.target), (None, &None));
        assert!(
            latency_row.display.contains("(20.0 ms): 150 %"),
            "{}",
            latency_row.display
        );
        let cpu_row = row(
            &report,
            "control (WebSocket, client +700 ns per token) vs WebSocket CPU per token",
        );
        assert_eq!(cpu_row.value("cpu_vs_ws"), Some(1.125));
        assert_eq!((cpu_row.met, &cpu_row.target), (None, &None));
        assert!(
            report.rows.iter().all(|r| !r.name.starts_with("SSE")),
            "{report:?}"
        );
    }

    #[test]
    fn the_processes_the_transport_does_not_reach_are_shown_apart() {
        // The SSE side ran on a slower machine: nats-server and the worker
        // cost 20 % more there, the gateway 50 %.
        let report = one_pair(
            (cpu_with_worker(1.0, 2.0, 3.0), 20),
            (cpu_with_worker(1.5, 2.4, 3.6), 20),
            "100 paced streams",
            Compared::Sse,
        );
        let cpu_row = row(&report, "SSE vs WebSocket CPU per token");
        let drift = cpu_row.value("transport_blind_vs_ws").unwrap();
        assert!((drift - 1.2).abs() < 1e-9, "{drift}");
        assert!(
            cpu_row
                .display
                .contains("nats-server and workers 120 % (the transport"),
            "{}",
            cpu_row.display
        );
        // The verdict stays the whole system's: 750 / 600 µs.
        assert_eq!(cpu_row.met, Some(false));
    }
}
