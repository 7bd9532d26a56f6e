//! `chatctl recovery`: many sessions chat at once through Nginx while faults
//! from a seeded schedule hit the system (dropped sockets, SIGKILLed
//! gateways and workers, a restarted nats-server; with `--cluster`, a
//! 3-node cluster whose stream leaders are killed, whose nodes are
//! partitioned and restarted in lame-duck mode, and gateways cut off from
//! NATS), and grey failures (a process paused with SIGSTOP, a node's store
//! filled to the last byte, lossy links). Afterwards every session is checked against its own stream
//! ([`crate::verify`]), a cluster's replicas against each other, and one
//! summary is printed: what was checked, what was injected, every broken
//! guarantee, and how long each kind of fault kept clients waiting.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use protocol::frames::SequencedEvent;
use protocol::SessionId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stack::{ClusterOptions, HostsChoice, Stack, StackOptions};
use tokio::time::Instant;

use crate::client::{Api, ChatClient, ClientOptions, SessionLog, SocketDropper};
use crate::faults::{self, FaultKind, FaultPlan, Schedule};
use crate::verify::{self, ExpectedAnswer, Violation, ViolationKind};

pub mod containers;
mod inject;
mod report;

use inject::inject;
use report::{millis, VIOLATIONS_LISTED};
pub use report::{recovery_times, Injected, RecoveryTimes, Replicas, Report};

/// How long the replicas may take to agree after the run before that is a
/// violation.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// The default window with `--cluster`. Its faults are injected one after
/// another and some take long (a rolling restart 12–17 s, a node kill waits
/// for the new leaders): with 80 s, the last ones came after every session
/// had finished, and not every kind landed.
const CLUSTER_WINDOW_SECS: u64 = 150;

/// What the default window gains per grey kind (pause, disk-full,
/// lossy-link) in the run: two faults of up to 15 s each, one after
/// another with the rest.
const GREY_WINDOW_SECS: u64 = 25;

/// The size of each JetStream store's own filesystem when disk-full is
/// among the kinds.
const STORE_BYTES: u64 = stack::disk::DEFAULT_STORE_BYTES;

/// The share of the window over which sessions start.
const SESSIONS_SPREAD: f64 = 0.9;
/// The share of the window by which faults are due.
const FAULTS_END: f64 = 0.75;

/// Flags of `chatctl recovery`.
#[derive(Clone, Debug, clap::Args)]
pub struct RecoveryArgs {
    /// Attach to a running stack (e.g. `just up`'s http://127.0.0.1:8080)
    /// instead of starting one; then only socket drops can be injected.
    #[arg(long)]
    pub url: Option<String>,
    /// With --url: the compose project (deploy/compose.yaml, e.g. `chat`)
    /// behind it; `gateway`, `worker` and `node-kill` faults then kill its
    /// containers and start them again (default kinds: drop, gateway,
    /// worker, node-kill).
    #[arg(long, requires = "url")]
    pub compose: Option<String>,
    /// Sessions chatting at once.
    #[arg(long, default_value_t = 200)]
    pub sessions: usize,
    /// Questions per session, one after another.
    #[arg(long, default_value_t = 3)]
    pub turns: usize,
    /// Seed of the fault schedule and of the prompts.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Faults in all (default: two of each kind; with --cluster one more,
    /// so each leader stream's node is killed once).
    #[arg(long)]
    pub faults: Option<usize>,
    /// Which faults (comma-separated): drop, gateway, worker, nats, pause,
    /// disk-full, lossy-link; with --cluster also node-kill, partition,
    /// gateway-cut, rolling. Default: drop,gateway,worker,nats; with
    /// --cluster every cluster kind, drop, gateway, worker and the grey
    /// kinds (pause, disk-full, lossy-link).
    #[arg(long)]
    pub fault_kinds: Option<String>,
    /// Run against a 3-node NATS cluster (every stream and the bucket R3),
    /// each node, gateway and worker a host of its own (network namespaces)
    /// where the machine allows it, on loopback otherwise.
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: loopback even where namespaces work (partitions and
    /// gateway cuts are then left out).
    #[arg(long)]
    pub loopback: bool,
    /// Gateways of the stack this tool starts.
    #[arg(long, default_value_t = 3)]
    pub gateways: usize,
    /// Workers of the stack this tool starts.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// The window over which sessions start and faults are injected
    /// (default 20 s; with --cluster 150 s: rolling restarts take long).
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Hard end of the run, from its start: a session not finished by then
    /// is a violation (`unfinished`). Default: the window plus 90 s.
    #[arg(long)]
    pub deadline_secs: Option<u64>,
    /// `CHAT_ACK_WAIT_MS` of the started stack: how soon a killed worker's
    /// job comes back.
    #[arg(long, default_value_t = 2000)]
    pub ack_wait_ms: u64,
    /// `DEMO_TOKENS_PER_SEC` of the started stack.
    #[arg(long, default_value_t = 100)]
    pub tokens_per_sec: u64,
    /// `DEMO_FIRST_TOKEN_MS` of the started stack.
    #[arg(long, default_value_t = 50)]
    pub first_token_ms: u64,
    /// `DEMO_ANSWER_TOKENS` of the workers (with `--url`, set it to what the
    /// running workers use: answers are compared with the demo's text).
    #[arg(long, env = "DEMO_ANSWER_TOKENS", default_value_t = 60)]
    pub answer_tokens: usize,
    /// Share of the sessions one `drop` fault hits.
    #[arg(long, default_value_t = 0.2)]
    pub drop_share: f64,
    /// Print the summary as JSON too.
    #[arg(long)]
    pub json: bool,
}

impl RecoveryArgs {
    /// The flags' defaults, for library callers that change a few.
    pub fn defaults() -> Self {
        <RecoveryCli as clap::Parser>::parse_from(["recovery"]).args
    }
}

#[derive(clap::Parser)]
struct RecoveryCli {
    #[command(flatten)]
    args: RecoveryArgs,
}

/// What one session task hands back.
struct SessionRun {
    index: usize,
    client: ChatClient,
    error: Option<String>,
}

/// A prompt for turn `turn` of session `index`: varied, so answers differ.
fn prompt(rng: &mut StdRng, index: usize, turn: usize) -> String {
    const TOPICS: [&str; 8] = [
        "how JetStream work-queues balance load",
        "why replay needs a sequence number",
        "what a sticky session buys",
        "how to cancel a running generation",
        "what happens when a worker dies",
        "how Nginx hashes a session id",
        "why chunks are not tokens",
        "how to bound a slow client's queue",
    ];
    let topic = TOPICS[rng.random_range(0..TOPICS.len())];
    format!("Session {index}, turn {turn}: explain {topic}.")
}

/// Runs a recovery run and returns its report. Errors only when the run
/// itself could not happen (no stack, no sessions).
pub async fn run(args: &RecoveryArgs) -> anyhow::Result<Report> {
    let started = Instant::now();
    let cluster = args.cluster && args.url.is_none();
    let compose = match &args.compose {
        Some(project) => Some(
            containers::ComposeDeployment::find(project)
                .with_context(|| format!("the compose project {project}"))?,
        ),
        None => None,
    };
    let mut kinds = match &args.fault_kinds {
        Some(list) => faults::parse_kinds(list).map_err(anyhow::Error::msg)?,
        None if compose.is_some() => {
            faults::parse_kinds("drop,gateway,worker,node-kill").map_err(anyhow::Error::msg)?
        }
        None if cluster => FaultKind::CLUSTER.to_vec(),
        None => faults::parse_kinds("drop,gateway,worker,nats").map_err(anyhow::Error::msg)?,
    };
    if compose.is_some() {
        kinds.retain(|k| containers::by_container(*k));
    } else if args.url.is_some() {
        kinds.retain(|k| !k.needs_processes());
    }
    if cluster {
        kinds.retain(|k| *k != FaultKind::Nats);
    } else if compose.is_none() {
        kinds.retain(|k| !k.needs_cluster());
    }
    if args.sessions == 0 || args.turns == 0 {
        bail!("--sessions and --turns must be at least 1");
    }
    if kinds.contains(&FaultKind::DiskFull) && !stack::disk::small_disks_available() {
        eprintln!("recovery: disk-full left out (a store of its own needs root to mount a tmpfs)");
        kinds.retain(|k| *k != FaultKind::DiskFull);
    }
    // The grey kinds last seconds each (a pause up to 15 s): a default
    // window gives each of them room.
    let grey = kinds.iter().filter(|k| k.is_grey()).count() as u64;
    let duration_secs = args.duration_secs.unwrap_or(if cluster {
        CLUSTER_WINDOW_SECS + GREY_WINDOW_SECS * grey
    } else {
        20 + GREY_WINDOW_SECS * grey
    });
    let window = Duration::from_secs(duration_secs.max(1));
    let deadline = started + Duration::from_secs(args.deadline_secs.unwrap_or(duration_secs + 90));

    let mut stack = match &args.url {
        Some(_) => None,
        None => Some(
            Stack::start(StackOptions {
                gateways: args.gateways,
                workers: args.workers,
                env: vec![
                    ("CHAT_ACK_WAIT_MS".into(), args.ack_wait_ms.to_string()),
                    (
                        "DEMO_TOKENS_PER_SEC".into(),
                        args.tokens_per_sec.to_string(),
                    ),
                    (
                        "DEMO_FIRST_TOKEN_MS".into(),
                        args.first_token_ms.to_string(),
                    ),
                    ("DEMO_ANSWER_TOKENS".into(), args.answer_tokens.to_string()),
                    ("RUST_LOG".into(), service_log_filter()),
                ],
                nginx: true,
                store_bytes: kinds.contains(&FaultKind::DiskFull).then_some(STORE_BYTES),
                cluster: cluster.then(|| ClusterOptions {
                    hosts: if args.loopback {
                        HostsChoice::Loopback
                    } else {
                        HostsChoice::Auto
                    },
                    sync_interval: std::env::var("NATS_SYNC_INTERVAL")
                        .ok()
                        .filter(|s| !s.is_empty()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .context("starting the stack")?,
        ),
    };
    let namespaced = stack
        .as_ref()
        .and_then(Stack::cluster)
        .is_some_and(|c| c.namespaced());
    if cluster && !namespaced {
        let dropped: Vec<&str> = kinds
            .iter()
            .filter(|k| k.needs_namespaces())
            .map(FaultKind::as_str)
            .collect();
        if !dropped.is_empty() {
            eprintln!(
                "recovery: the cluster runs on loopback; left out: {}",
                dropped.join(", ")
            );
        }
        kinds.retain(|k| !k.needs_namespaces());
    }
    let base = match (&args.url, &stack) {
        (Some(url), _) => url.clone(),
        (None, Some(stack)) => stack.nginx_url(),
        (None, None) => bail!("no stack"),
    };
    let api = Api::new(base.clone());
    let default_count = 2 * kinds.len() + usize::from(kinds.contains(&FaultKind::NodeKill));
    let plan = FaultPlan {
        count: args.faults.unwrap_or(default_count),
        kinds: kinds.clone(),
        // Faults start once a few sessions stream and stop well before the
        // last sessions start (see `SESSIONS_SPREAD`): faults are injected
        // one after another, and a slow one (a rolling restart) pushes the
        // rest later; a fault due after every session finished is lost.
        start: window / 10,
        end: window.mul_f64(FAULTS_END),
        gateways: stack.as_ref().map_or(
            compose
                .as_ref()
                .map_or(0, containers::ComposeDeployment::gateway_count),
            Stack::gateway_count,
        ),
        workers: stack.as_ref().map_or(
            compose
                .as_ref()
                .map_or(0, containers::ComposeDeployment::worker_count),
            Stack::worker_count,
        ),
        nodes: if stack.as_ref().and_then(Stack::cluster).is_some() {
            stack::cluster::NODES
        } else {
            compose
                .as_ref()
                .map_or(0, containers::ComposeDeployment::node_count)
        },
        sessions: args.sessions,
        drop_share: args.drop_share,
        gateway_hosts: namespaced,
    };
    let schedule = Schedule::generate(args.seed, &plan);
    eprint!("{schedule}");

    // Sessions first (through Nginx, as a browser would), then the chats.
    let created: Vec<anyhow::Result<(SessionId, String)>> = futures::stream::iter(0..args.sessions)
        .map(|_| api.create_session_until(deadline))
        .buffered(32)
        .collect()
        .await;
    let mut clients = Vec::with_capacity(args.sessions);
    for result in created {
        let (session, token) = result.context("creating sessions")?;
        clients.push(ChatClient::new(
            &base,
            session,
            token,
            ClientOptions::default(),
        ));
    }
    let droppers: Vec<SocketDropper> = clients.iter().map(ChatClient::dropper).collect();
    let run_start = Instant::now();
    let mut prompts = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let mut tasks = Vec::with_capacity(args.sessions);
    // Sessions start spread over most of the window, so some are always
    // streaming when a fault hits.
    let spread = window.mul_f64(SESSIONS_SPREAD);
    for (index, mut client) in clients.into_iter().enumerate() {
        let start_at = run_start + spread.mul_f64(index as f64 / args.sessions as f64);
        let questions: Vec<String> = (0..args.turns)
            .map(|turn| prompt(&mut prompts, index, turn))
            .collect();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start_at).await;
            let mut error = None;
            for q in &questions {
                if let Err(e) = client.ask(q, deadline).await {
                    error = Some(format!("{e:#}"));
                    break;
                }
            }
            SessionRun {
                index,
                client,
                error,
            }
        }));
    }

    // Faults, in order, while the sessions stream.
    let mut injected = Vec::new();
    for fault in &schedule.faults {
        tokio::time::sleep_until(run_start + fault.at).await;
        if tasks.iter().all(|t| t.is_finished()) {
            eprintln!("every session finished; {fault} not injected");
            break;
        }
        let at = Instant::now();
        let (detail, error) = match inject(fault, stack.as_mut(), compose.as_ref(), &droppers).await
        {
            Ok(detail) => (detail, None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        eprintln!(
            "injected {fault}{}{} (took {} ms)",
            detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default(),
            error
                .as_deref()
                .map(|e| format!(": FAILED {e}"))
                .unwrap_or_default(),
            millis(at.elapsed())
        );
        injected.push((
            Injected {
                fault: fault.clone(),
                injected_at_ms: millis(at - run_start),
                took_ms: millis(at.elapsed()),
                detail,
                error,
            },
            at,
        ));
    }

    let mut runs = Vec::with_capacity(tasks.len());
    for task in tasks {
        match tokio::time::timeout_at(deadline + Duration::from_secs(15), task).await {
            Ok(Ok(run)) => runs.push(run),
            Ok(Err(e)) => bail!("a session task failed: {e}"),
            Err(_) => bail!("a session task outlived the deadline"),
        }
    }
    runs.sort_by_key(|r| r.index);

    // Verify every session against its stream.
    let verify_deadline = Instant::now() + Duration::from_secs(60);
    let mut violations = Vec::new();
    let mut events_checked = 0;
    let mut stale_events = 0;
    let mut messages = 0;
    let checked: Vec<(SessionRun, Vec<Violation>, Vec<SequencedEvent>)> =
        futures::stream::iter(runs)
            .map(|mut run| {
                let api = api.clone();
                let tokens = args.answer_tokens;
                async move {
                    let (violations, events) =
                        check_session(&api, &mut run, tokens, verify_deadline).await;
                    run.client.close().await;
                    (run, violations, events)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    let mut logs: Vec<SessionLog> = Vec::with_capacity(checked.len());
    let mut reconnects = 0;
    let mut restart_closes = 0;
    for (run, found, events) in checked {
        events_checked += events.len();
        stale_events += verify::stale_events(&events);
        messages += run.client.log.asked.len();
        reconnects += u64::from(run.client.log.reconnects);
        restart_closes += u64::from(run.client.log.restart_closes);
        violations.extend(found);
        logs.push(run.client.log);
    }

    let node_names: Vec<String> = match (&stack, &compose) {
        (Some(stack), _) => (0..stack.gateway_count())
            .map(|i| stack.gateway_node(i))
            .collect(),
        (None, Some(deployment)) => (0..deployment.gateway_count())
            .map(|i| deployment.gateway_node(i))
            .collect(),
        (None, None) => Vec::new(),
    };
    let recovery = recovery_times(&injected, &logs, &node_names);
    let replicas = match stack.as_ref().and_then(Stack::cluster) {
        Some(cluster) => Some(Replicas::check(cluster, CONVERGENCE_TIMEOUT).await),
        None => None,
    };
    let cluster_hosts = stack
        .as_ref()
        .and_then(Stack::cluster)
        .map(|c| {
            c.loopback_reason()
                .map_or("namespaces".to_string(), |why| format!("loopback ({why})"))
        })
        .or_else(|| {
            args.compose
                .as_ref()
                .map(|project| format!("the containers of the compose project {project}"))
        });
    if let Some(stack) = &stack {
        keep_logs(stack);
    }
    drop(stack);

    let mut violations_by_kind = BTreeMap::new();
    for v in &violations {
        *violations_by_kind.entry(v.kind).or_insert(0) += 1;
    }
    let mut faults_injected = BTreeMap::new();
    for (i, _) in &injected {
        if i.error.is_none() {
            *faults_injected.entry(i.fault.kind).or_insert(0) += 1;
        }
    }
    violations.truncate(VIOLATIONS_LISTED);
    Ok(Report {
        seed: args.seed,
        sessions: args.sessions,
        turns: args.turns,
        messages,
        events_checked,
        stale_events,
        reconnects,
        restart_closes,
        faults_injected,
        faults: injected.into_iter().map(|(i, _)| i).collect(),
        violations_by_kind,
        violations,
        recovery,
        replicas,
        cluster_hosts,
        elapsed_ms: millis(started.elapsed()),
    })
}

/// `RUST_LOG` of the started gateways and workers: `warn`, or
/// `RECOVERY_SERVICE_LOG` (e.g. `info,worker=debug` to see where a stall's
/// time goes).
fn service_log_filter() -> String {
    std::env::var("RECOVERY_SERVICE_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "warn".into())
}

/// Copies the started stack's logs (gateways, workers, nats-server, Nginx)
/// to `RECOVERY_KEEP_LOGS` when set: the stack's own folder goes with it.
fn keep_logs(stack: &Stack) {
    let Some(to) = std::env::var_os("RECOVERY_KEEP_LOGS").filter(|s| !s.is_empty()) else {
        return;
    };
    let to = std::path::PathBuf::from(to);
    let copied = std::fs::create_dir_all(&to).and_then(|()| {
        let mut n = 0;
        for entry in walk(&stack.run_dir())? {
            if entry.extension().is_some_and(|e| e == "log") {
                let name = entry
                    .strip_prefix(stack.run_dir())
                    .unwrap_or(&entry)
                    .to_string_lossy()
                    .replace('/', "_");
                std::fs::copy(&entry, to.join(name))?;
                n += 1;
            }
        }
        Ok(n)
    });
    match copied {
        Ok(n) => eprintln!("recovery: {n} logs copied to {}", to.display()),
        Err(e) => eprintln!("recovery: copying logs to {}: {e}", to.display()),
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// Reads a session's stream, lets the client catch up with it (events may
/// follow its last answer only if something is wrong; the client should
/// see them so they count as what they are), and checks both.
async fn check_session(
    api: &Api,
    run: &mut SessionRun,
    answer_tokens: usize,
    deadline: Instant,
) -> (Vec<Violation>, Vec<SequencedEvent>) {
    let session = run.client.session();
    let mut violations = Vec::new();
    if let Some(error) = &run.error {
        violations.push(Violation {
            kind: ViolationKind::Unfinished,
            session,
            message_id: run
                .client
                .log
                .asked
                .iter()
                .find(|a| a.finished_at.is_none())
                .map(|a| a.message_id),
            detail: error.clone(),
        });
    }
    let token = run.client.token().to_string();
    let truth = match api.events_until(session, &token, deadline).await {
        Ok(truth) => truth,
        Err(e) => {
            violations.push(Violation {
                kind: ViolationKind::Unverifiable,
                session,
                message_id: None,
                detail: format!("{e:#}"),
            });
            return (violations, Vec::new());
        }
    };
    if run.error.is_none() {
        if let Some(last) = truth.last() {
            let catch_up = Instant::now() + Duration::from_secs(10);
            if let Err(e) = run.client.catch_up(last.seq, catch_up.min(deadline)).await {
                violations.push(Violation {
                    kind: ViolationKind::Gap,
                    session,
                    message_id: None,
                    detail: format!("could not catch up with the stream: {e:#}"),
                });
            }
        }
    }
    violations.extend(verify::check_stream(
        session,
        &truth,
        &run.client.log.events(),
    ));
    let expected: Vec<ExpectedAnswer> = run
        .client
        .log
        .asked
        .iter()
        // A question whose ask failed is already `unfinished`.
        .filter(|a| run.error.is_none() || a.finished_at.is_some())
        .map(|a| ExpectedAnswer {
            message_id: a.message_id,
            text: worker::backends::demo::answer(&a.prompt, answer_tokens),
        })
        .collect();
    violations.extend(verify::check_answers(session, &truth, &expected));
    (violations, truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_flags_parse() {
        let args = RecoveryArgs::defaults();
        assert_eq!((args.sessions, args.turns, args.seed), (200, 3, 42));
        assert!(!args.cluster && args.fault_kinds.is_none());
    }
}
