//! `chatctl soak`: an hour (or two minutes) of steady, mixed load with a
//! seeded fault every few minutes, every session audited as `chatctl
//! recovery` audits them, and the processes and the JetStream store sampled
//! every 30 s to show whether anything grows.
//!
//! - [`users`]: the simulated users, each one session after another;
//! - [`sample`]: what `/proc` and JetStream say, and the CSV;
//! - [`verdict`]: fitted slopes and retention bounds, the pass or fail;
//! - [`plot`]: the samples as one PNG.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use protocol::setup::LayoutConfig;
use rand::rngs::StdRng;
use rand::SeedableRng;
use stack::{Stack, StackOptions};
use tokio::time::Instant;

use crate::faults::{self, FaultKind, FaultPlan, Schedule};
use crate::recovery::inject::inject;
use crate::verify::ViolationKind;

mod plot;
mod sample;
mod users;
mod verdict;

pub use sample::{ProcessSample, Sample, StoreSample};
pub use verdict::{Bounds, Verdict};

/// Flags of `chatctl soak`.
#[derive(Clone, Debug, clap::Args)]
pub struct SoakArgs {
    /// How long the load runs: `60m`, `2m`, `90s`.
    #[arg(long, default_value = "60m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Users chatting at once, each one session after another.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// `DEMO_TOKENS_PER_SEC` of the workers: each answer streams at this pace.
    #[arg(long, default_value_t = 50)]
    pub tokens_per_sec: u64,
    /// `DEMO_ANSWER_TOKENS` of the workers.
    #[arg(long, default_value_t = 150)]
    pub answer_tokens: usize,
    /// Seed of the mix, the prompts and the fault schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A fault every this many seconds (seeded kind and target).
    #[arg(long, default_value_t = 240)]
    pub fault_every_secs: u64,
    /// Which faults (as `chatctl recovery --fault-kinds`).
    #[arg(long, default_value = "drop,gateway,worker,nats")]
    pub fault_kinds: String,
    /// Seconds between samples of the processes and the store.
    #[arg(long, default_value_t = 30)]
    pub sample_secs: u64,
    /// Samples before this are left out of the fitted slopes (default 5
    /// minutes, or a quarter of a shorter run).
    #[arg(long)]
    pub warmup_secs: Option<u64>,
    /// Gateways of the started stack.
    #[arg(long, default_value_t = 3)]
    pub gateways: usize,
    /// Workers of the started stack.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// `CHAT_REPLAY_WINDOW_SECS` of the stack (default: a sixth of the run,
    /// 60–600 s): short, so that events expire within the run and the store
    /// must level off.
    #[arg(long)]
    pub replay_window_secs: Option<u64>,
    /// `CHAT_SESSION_TTL_SECS` and `CHAT_HISTORY_MAX_AGE_SECS` of the
    /// stack (default: a quarter of the run, 90–900 s): session records,
    /// cancel flags, claims and turns expire within the run.
    #[arg(long)]
    pub session_ttl_secs: Option<u64>,
    /// A process whose RSS grows faster than this (MiB per hour, fitted
    /// after the warm-up) fails the run. RSS moves in the allocator's steps
    /// of about a MiB, and the faults restart processes every 20–30 minutes:
    /// one such step inside a 20-minute stretch fits as +3 MiB/h. A leak of
    /// 100 bytes per answer (the hour's ~40,000 answers per worker) is 4.
    #[arg(long, default_value_t = 4.0)]
    pub max_rss_mib_per_hour: f64,
    /// A process whose open descriptors other than sockets (files, pipes,
    /// event and timer descriptors) grow faster than this (per hour, fitted
    /// after the warm-up) fails the run.
    #[arg(long, default_value_t = 2.0)]
    pub max_fds_per_hour: f64,
    /// A process whose sockets grow faster than this (per hour) fails the
    /// run. Sockets follow the users connected (a gateway holds ~70 that
    /// rise and fall by ten as users come and go), so their fitted slope is
    /// noisier; a leak of one socket per reconnect would be thousands per
    /// hour, one every three minutes still fails.
    #[arg(long, default_value_t = 20.0)]
    pub max_sockets_per_hour: f64,
    /// A slope is only judged over at least this much of one process's life
    /// after the warm-up (shorter fits are printed, not judged: two minutes
    /// of noise say nothing about an hour).
    #[arg(long, default_value_t = 600)]
    pub min_fit_secs: u64,
    /// Where the CSV and the PNG go.
    #[arg(long, default_value = "run/soak")]
    pub out: PathBuf,
    /// Judges the samples of an earlier run (its `soak.csv`) by this
    /// build's rules and the bounds given, instead of running; give the
    /// run's `--duration` (and retention flags) so its retention windows
    /// are known. The audit of events is the run's own, not redone.
    #[arg(long)]
    pub judge: Option<PathBuf>,
}

impl SoakArgs {
    /// The flags' defaults, for library callers that change a few.
    pub fn defaults() -> Self {
        <SoakCli as clap::Parser>::parse_from(["soak"]).args
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs(
            self.warmup_secs
                .unwrap_or_else(|| (self.duration.as_secs() / 4).min(300)),
        )
    }

    fn bounds(&self, layout: LayoutConfig) -> Bounds {
        Bounds {
            warmup: self.warmup(),
            min_fit: Duration::from_secs(self.min_fit_secs),
            max_rss_mib_per_hour: self.max_rss_mib_per_hour,
            max_fds_per_hour: self.max_fds_per_hour,
            max_sockets_per_hour: self.max_sockets_per_hour,
            layout,
        }
    }

    /// The retention a run with these flags gives its stack, as the
    /// stack's environment.
    fn retention_env(&self) -> Vec<(String, String)> {
        let replay = self.replay_window_secs();
        let ttl = self.session_ttl_secs();
        [
            ("CHAT_REPLAY_WINDOW_SECS", replay),
            // The dedup window may not outlast the events it deduplicates.
            ("CHAT_DEDUP_WINDOW_SECS", replay.min(600)),
            ("CHAT_SESSION_TTL_SECS", ttl),
            ("CHAT_HISTORY_MAX_AGE_SECS", ttl),
        ]
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .into()
    }

    fn replay_window_secs(&self) -> u64 {
        self.replay_window_secs
            .unwrap_or_else(|| (self.duration.as_secs() / 6).clamp(60, 600))
    }

    fn session_ttl_secs(&self) -> u64 {
        self.session_ttl_secs
            .unwrap_or_else(|| (self.duration.as_secs() / 4).clamp(90, 900))
    }
}

#[derive(clap::Parser)]
struct SoakCli {
    #[command(flatten)]
    args: SoakArgs,
}

/// `60m`, `2m`, `90s`, `1h`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 60m, 2m or 90s"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        other => return Err(format!("unknown unit {other:?} (s, m, h)")),
    };
    Ok(Duration::from_secs(secs))
}

/// Judges the samples of an earlier run (`--judge`): the memory,
/// descriptor and retention verdict by this build's rules.
pub fn judge_earlier_run(args: &SoakArgs, csv: &Path) -> anyhow::Result<Verdict> {
    let samples =
        sample::read_csv(csv).with_context(|| format!("reading the samples {}", csv.display()))?;
    if samples.len() < 2 {
        bail!(
            "{} holds {} samples: nothing to judge",
            csv.display(),
            samples.len()
        );
    }
    let layout = LayoutConfig::from_env_overrides(&args.retention_env())
        .context("the soak's layout settings")?;
    Ok(verdict::judge(&samples, &args.bounds(layout)))
}

/// What the users did, summed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Activity {
    pub sessions: u64,
    /// `POST /api/sessions` sent (retries included).
    pub session_requests: u64,
    pub questions: u64,
    pub cancels: u64,
    pub regenerates: u64,
    pub drops: u64,
    pub reconnects: u64,
    /// `replay_expired` notices the users' clients got.
    pub replay_expired: u64,
    pub events_checked: u64,
    pub stale_events: u64,
}

/// The outcome of a soak run.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub duration_secs: u64,
    pub users: usize,
    pub activity: Activity,
    pub faults_injected: BTreeMap<FaultKind, usize>,
    pub fault_errors: Vec<String>,
    pub violations_by_kind: BTreeMap<ViolationKind, usize>,
    pub violations: Vec<String>,
    pub verdict: Verdict,
    pub csv: PathBuf,
    pub png: PathBuf,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations_by_kind.is_empty() && self.fault_errors.is_empty() && self.verdict.passed()
    }

    pub fn to_markdown(&self) -> String {
        let a = &self.activity;
        let mut out = format!(
            "## Soak: {} s, {} users, seed {}: {}\n\n\
             {} sessions, {} questions ({} cancelled, {} regenerated), {} sockets dropped, \
             {} reconnects, {} `replay_expired` notices; {} events audited ({} stale, ignored as a client does)\n\n",
            self.duration_secs,
            self.users,
            self.seed,
            if self.passed() { "PASS" } else { "FAIL" },
            a.sessions,
            a.questions,
            a.cancels,
            a.regenerates,
            a.drops,
            a.reconnects,
            a.replay_expired,
            a.events_checked,
            a.stale_events,
        );
        let faults: Vec<String> = self
            .faults_injected
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect();
        out.push_str(&format!("Faults: {}\n\n", faults.join(", ")));
        for e in &self.fault_errors {
            out.push_str(&format!("- fault failed: {e}\n"));
        }
        if self.violations_by_kind.is_empty() {
            out.push_str("Violations: 0\n\n");
        } else {
            let kinds: Vec<String> = self
                .violations_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            out.push_str(&format!("Violations: {}\n\n", kinds.join(", ")));
            for v in &self.violations {
                out.push_str(&format!("- {v}\n"));
            }
            out.push('\n');
        }
        out.push_str(&self.verdict.to_markdown());
        out.push_str(&format!(
            "\nSamples: {}\nPlot: {}\n",
            self.csv.display(),
            self.png.display()
        ));
        out
    }
}

/// How many violations a report lists one by one.
const VIOLATIONS_LISTED: usize = 20;

/// After the load stops, how long the last sessions have to finish.
const GRACE: Duration = Duration::from_secs(120);

/// Runs a soak: starts a stack, loads it, injects faults, samples, audits;
/// errors only when the run itself could not happen.
pub async fn run(args: &SoakArgs) -> anyhow::Result<Report> {
    if args.users == 0 || args.sample_secs == 0 {
        bail!("--users and --sample-secs must be at least 1");
    }
    let kinds: Vec<FaultKind> = faults::parse_kinds(&args.fault_kinds)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .filter(|k| !k.needs_cluster())
        .collect();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut env: Vec<(String, String)> = vec![
        (
            "DEMO_TOKENS_PER_SEC".into(),
            args.tokens_per_sec.to_string(),
        ),
        ("DEMO_ANSWER_TOKENS".into(), args.answer_tokens.to_string()),
        ("DEMO_FIRST_TOKEN_MS".into(), "200".into()),
        ("CHAT_ACK_WAIT_MS".into(), "3000".into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    env.extend(args.retention_env());
    let layout = LayoutConfig::from_env_overrides(&env).context("the soak's layout settings")?;
    let bounds = args.bounds(layout);
    let mut stack = Stack::start(StackOptions {
        gateways: args.gateways,
        workers: args.workers,
        env,
        nginx: true,
        ..Default::default()
    })
    .await
    .context("starting the stack")?;
    let base = stack.nginx_url();
    let started = Instant::now();
    let end = started + args.duration;
    let deadline = end + GRACE;

    let fault_count = (args.duration.as_secs() / args.fault_every_secs.max(1)) as usize;
    let plan = FaultPlan {
        count: if kinds.is_empty() { 0 } else { fault_count },
        kinds,
        start: Duration::from_secs(args.fault_every_secs.max(1)).min(args.duration / 4),
        end: args.duration.saturating_sub(Duration::from_secs(10)),
        gateways: stack.gateway_count(),
        workers: stack.worker_count(),
        nodes: 0,
        sessions: args.users,
        drop_share: 0.2,
        // One host for every process: a `lossy-link` hits the server's links.
        gateway_hosts: false,
    };
    let schedule = Schedule::generate(args.seed, &plan);
    eprint!("{schedule}");

    let nats = stack
        .connect_nats(protocol::access::Role::Ops)
        .await
        .context("connecting to NATS to sample the store")?;
    let js = async_nats::jetstream::new(nats);
    // The first sample, before any user: what the stack itself stored
    // (its health checks open a session) is the keys' baseline.
    let mut samples: Vec<Sample> =
        vec![sample::take(&stack, &js, started, Activity::default).await];
    let droppers: Vec<users::DropSlot> = (0..args.users)
        .map(|_| Arc::new(Mutex::new(None)))
        .collect();
    let totals = Arc::new(Mutex::new(users::Totals::default()));
    let mut tasks = Vec::with_capacity(args.users);
    let mut seeds = StdRng::seed_from_u64(args.seed ^ 0x50a4);
    let activity = {
        let totals = totals.clone();
        move || {
            totals
                .lock()
                .map(|t| t.activity.clone())
                .unwrap_or_default()
        }
    };
    for (index, slot) in droppers.iter().enumerate() {
        let user = users::User {
            index,
            base: base.clone(),
            rng: StdRng::from_rng(&mut seeds),
            answer_tokens: args.answer_tokens,
            // Users start over the first half minute, not all at once.
            start_at: started + Duration::from_millis(30_000 * index as u64 / args.users as u64),
            end,
            deadline,
            slot: slot.clone(),
            totals: totals.clone(),
        };
        tasks.push(tokio::spawn(user.run()));
    }

    let mut injected: Vec<(Duration, FaultKind)> = Vec::new();
    let mut fault_errors = Vec::new();
    let mut faults_injected = BTreeMap::new();
    let mut pending = schedule.faults.iter().peekable();
    let every = Duration::from_secs(args.sample_secs);
    let mut next_sample = started + every;
    while Instant::now() < end {
        let next_fault = pending.peek().map(|f| started + f.at);
        if next_fault.is_some_and(|at| at < next_sample) {
            let Some(fault) = pending.next() else { break };
            tokio::time::sleep_until(started + fault.at).await;
            let at = Instant::now();
            let result = if fault.kind == FaultKind::Drop {
                users::drop_sockets(&droppers, &fault.targets);
                Ok(None)
            } else {
                inject(fault, Some(&mut stack), None, &[]).await
            };
            match result {
                Ok(detail) => {
                    eprintln!(
                        "soak: {:>5} s injected {fault}{} ({} ms)",
                        (at - started).as_secs(),
                        detail.map(|d| format!(" ({d})")).unwrap_or_default(),
                        at.elapsed().as_millis()
                    );
                    *faults_injected.entry(fault.kind).or_insert(0) += 1;
                    injected.push((at - started, fault.kind));
                }
                Err(e) => {
                    eprintln!("soak: {fault} FAILED: {e:#}");
                    fault_errors.push(format!("{fault}: {e:#}"));
                }
            }
            continue;
        }
        tokio::time::sleep_until(next_sample).await;
        if Instant::now() >= end && !samples.is_empty() {
            break;
        }
        let sample = sample::take(&stack, &js, started, &activity).await;
        eprintln!("soak: {}", sample.one_line());
        samples.push(sample);
        next_sample += every;
    }
    eprintln!("soak: load stops; waiting for the last sessions (at most {GRACE:?})");
    for task in tasks {
        if tokio::time::timeout_at(deadline + Duration::from_secs(30), task)
            .await
            .is_err()
        {
            bail!("a user task outlived the deadline");
        }
    }
    // One last sample once the load has stopped.
    samples.push(sample::take(&stack, &js, started, &activity).await);
    drop(stack);

    let csv = args.out.join("soak.csv");
    sample::write_csv(&csv, &samples).with_context(|| format!("writing {}", csv.display()))?;
    let png = args.out.join("soak.png");
    plot::draw(&png, &samples, &injected, args.warmup())
        .with_context(|| format!("drawing {}", png.display()))?;
    let verdict = verdict::judge(&samples, &bounds);

    let totals = totals
        .lock()
        .map(|mut t| std::mem::take(&mut *t))
        .unwrap_or_default();
    let mut violations_by_kind = BTreeMap::new();
    for v in &totals.violations {
        *violations_by_kind.entry(v.kind).or_insert(0) += 1;
    }
    Ok(Report {
        seed: args.seed,
        duration_secs: args.duration.as_secs(),
        users: args.users,
        activity: totals.activity,
        faults_injected,
        fault_errors,
        violations_by_kind,
        violations: totals
            .violations
            .iter()
            .take(VIOLATIONS_LISTED)
            .map(ToString::to_string)
            .collect(),
        verdict,
        csv,
        png,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60m"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("120"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn retention_defaults_follow_the_duration() {
        let mut args = SoakArgs::defaults();
        assert_eq!(args.duration, Duration::from_secs(3600));
        assert_eq!(args.warmup(), Duration::from_secs(300));
        assert_eq!(args.replay_window_secs(), 600);
        assert_eq!(args.session_ttl_secs(), 900);
        args.duration = Duration::from_secs(120);
        assert_eq!(args.warmup(), Duration::from_secs(30));
        assert_eq!(args.replay_window_secs(), 60);
        assert_eq!(args.session_ttl_secs(), 90);
    }
}
