//! The capacity phase: the most paced streams a stack holds with every
//! token delivered within [`CAPACITY_TOKEN_P99_MS`] (p99) and an exact
//! ledger, stepping the load up until a step misses; for us and for the
//! peer (resumable-stream on Redis) in the same run, one after the other on
//! the same machine. The JSON carries `"capacity": {"ours": N, "peer": M}`.

use anyhow::Context;
use serde::Serialize;
use stack::{Stack, StackOptions};

use super::super::load;
use super::super::peer::{self, PeerLoadSpec, PeerOptions, PeerService};
use super::super::report::{millis, Report, Row};
use super::super::socket::Endpoint;
use super::{check, paced_env, spec, BenchArgs, Settings};

/// A step is held while its token latency p99 (model yields → client
/// receives) stays under this.
const CAPACITY_TOKEN_P99_MS: f64 = 250.0;

/// The capacity phase's result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Capacity {
    /// Paced streams our stack held (0: not even the first step).
    pub ours: usize,
    /// Paced streams the peer held; `None` when the peer did not run.
    pub peer: Option<usize>,
    pub token_p99_target_ms: f64,
    pub tokens_per_sec: f64,
    /// Every step taken, in order.
    pub steps: Vec<CapacityStep>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CapacityStep {
    /// `ours` or `peer`.
    pub who: &'static str,
    pub streams: usize,
    pub token_p99_ms: Option<f64>,
    pub tokens_per_sec: f64,
    /// No event lost, doubled or refused, no answer restarted.
    pub exact: bool,
    pub held: bool,
}

impl CapacityStep {
    fn new(who: &'static str, streams: usize, p99: Option<f64>, tps: f64, exact: bool) -> Self {
        let held = exact && p99.is_some_and(|p| p < CAPACITY_TOKEN_P99_MS);
        Self {
            who,
            streams,
            token_p99_ms: p99,
            tokens_per_sec: tps,
            exact,
            held,
        }
    }

    fn row(&self, rate: f64) -> Row {
        let p99 = self
            .token_p99_ms
            .map_or_else(|| "no tokens".to_string(), |p| format!("{} ms", millis(p)));
        Row::text(
            format!(
                "capacity step, {}: {} paced streams at {rate} tokens/s",
                self.who, self.streams
            ),
            vec![
                ("streams".into(), self.streams as f64),
                ("token_p99_ms".into(), self.token_p99_ms.unwrap_or(f64::NAN)),
                ("tokens_per_sec".into(), self.tokens_per_sec),
                ("held".into(), f64::from(u8::from(self.held))),
            ],
            format!(
                "token p99 {p99}, {:.0} tokens/s{}: {}",
                self.tokens_per_sec,
                if self.exact { "" } else { ", ledger NOT exact" },
                if self.held { "held" } else { "missed" }
            ),
        )
    }
}

/// Steps our paced stack up, then the peer's (unless `--only` leaves the
/// peer out), and reports both.
pub(super) async fn run(args: &BenchArgs, s: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let rate = args.paced_tokens_per_sec;
    let mut capacity = Capacity {
        token_p99_target_ms: CAPACITY_TOKEN_P99_MS,
        tokens_per_sec: rate,
        ..Default::default()
    };
    println!("capacity: our paced stack, stepping {:?}", s.capacity_loads);
    let stack = Stack::start(StackOptions {
        gateways: args.gateways,
        workers: args.workers,
        env: paced_env(args, s),
        nginx: true,
        ..Default::default()
    })
    .await
    .context("starting the capacity stack")?;
    let endpoint = Endpoint::parse(&stack.nginx_url())?;
    for &streams in &s.capacity_loads {
        println!("capacity, ours: {streams} paced streams at {rate} tokens/s");
        let mut outcome = load::run(&endpoint, &spec(args, s, streams, s.paced, true)).await?;
        let p99 = outcome.token_latency.summary().map(|x| x.p99_ms);
        let exact = outcome.problems.is_empty() && outcome.restarts == 0;
        let step = CapacityStep::new("ours", streams, p99, outcome.tokens_per_sec, exact);
        check(report, &endpoint, args, std::mem::take(&mut outcome)).await;
        report.push(step.row(rate));
        let held = step.held;
        capacity.steps.push(step);
        if !held {
            break;
        }
        capacity.ours = streams;
    }
    drop(stack);
    if args.only.is_empty() || args.only.contains(&super::Phase::Peer) || args.capacity_peer {
        let options = PeerOptions {
            processes: args.peer_processes,
            appendonly: args.peer_redis_appendonly,
        };
        let peer = PeerService::start(&options).await?;
        let mut held_peer = 0;
        for &streams in &s.capacity_loads {
            println!("capacity, peer: {streams} paced streams at {rate} tokens/s");
            let spec = PeerLoadSpec {
                sessions: streams,
                warmup: s.warmup,
                measure: s.paced,
                stagger: s.paced_stagger,
                answer_tokens: args.answer_tokens,
                tokens_per_sec: rate,
                first_token_ms: peer::DEMO_FIRST_TOKEN_MS,
                resume_every: args.peer_resume_every,
                max_turns: None,
            };
            let mut outcome = peer::load::run(&peer.url(), &peer.pids(), &spec)
                .await
                .with_context(|| {
                    format!("peer capacity, {streams}; its logs:\n{}", peer.log_tail())
                })?;
            let p99 = outcome.token_latency.summary().map(|x| x.p99_ms);
            let exact = outcome.problems.is_empty();
            for p in std::mem::take(&mut outcome.problems) {
                report.problem(format!("peer: {p}"));
            }
            let step = CapacityStep::new("peer", streams, p99, outcome.tokens_per_sec, exact);
            report.push(step.row(rate));
            let held = step.held;
            capacity.steps.push(step);
            if !held {
                break;
            }
            held_peer = streams;
        }
        capacity.peer = Some(held_peer);
    }
    let peer = capacity
        .peer
        .map_or_else(|| "not run".to_string(), |p| p.to_string());
    report.push(Row::text(
        format!(
            "capacity: paced streams held at token p99 < {CAPACITY_TOKEN_P99_MS} ms, exact ledger ({rate} tokens/s each)"
        ),
        vec![
            ("ours".into(), capacity.ours as f64),
            ("peer".into(), capacity.peer.map_or(f64::NAN, |p| p as f64)),
        ],
        format!("ours {}, peer {peer}", capacity.ours),
    ));
    report.capacity = Some(capacity);
    Ok(())
}
