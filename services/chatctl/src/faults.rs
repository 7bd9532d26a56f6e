//! A fault schedule made from a seed: which faults, against what, and when
//! (relative to the start of a run). The same seed and plan give the same
//! schedule, so a failing recovery run can be repeated exactly.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// A kind of fault a recovery run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Clients close their socket abruptly (no close frame) and reconnect.
    Drop,
    /// SIGKILL a gateway, then start it again on its port.
    Gateway,
    /// SIGKILL a worker mid-generation, then start it again.
    Worker,
    /// Restart nats-server (same port, same store).
    Nats,
    /// Cluster: SIGKILL the node leading one stream (the streams of
    /// [`LEADER_STREAMS`] in turn), then start it again.
    NodeKill,
    /// Cluster: cut one node off from the other two and from every client
    /// for [`CUT_HOLD`], then heal.
    Partition,
    /// Cluster: cut one gateway's host off from every NATS node for
    /// [`CUT_HOLD`] (its clients still reach it), then heal.
    GatewayCut,
    /// Cluster: restart all three nodes one after another, each in
    /// lame-duck mode.
    Rolling,
    /// SIGSTOP a process for a seeded [`PAUSE_SECS`], then SIGCONT: the
    /// node leading `CHAT_EVENTS` (it wakes up still believing it leads), a
    /// follower node, the single nats-server, a gateway or a worker
    /// ([`Fault::process`]).
    Pause,
    /// Fill a NATS node's store (a small filesystem of its own) with a
    /// ballast file for [`Fault::hold`], then free it.
    DiskFull,
    /// Drop a seeded share ([`LOSS_PERCENT`]) of the packets of one node's
    /// links, or between a gateway and NATS, for [`Fault::hold`].
    LossyLink,
}

/// What a `pause`, `disk-full` or `lossy-link` fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Process {
    /// The single nats-server.
    Nats,
    /// Cluster: the node leading `CHAT_EVENTS` when the fault is injected.
    Leader,
    /// Cluster: a node not leading `CHAT_EVENTS` (`targets[0]` picks which
    /// of the two).
    Follower,
    /// Cluster: node `targets[0]`.
    Node,
    /// Gateway `targets[0]`.
    Gateway,
    /// Worker `targets[0]`.
    Worker,
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Process::Nats => "nats-server",
            Process::Leader => "the CHAT_EVENTS leader",
            Process::Follower => "a follower node",
            Process::Node => "node",
            Process::Gateway => "gateway",
            Process::Worker => "worker",
        })
    }
}

/// How long a `pause` lasts, in seconds (seeded within): around nats-server's
/// Raft election timeout (4–9 s), so some pauses of a leader end before an
/// election and some after one.
pub const PAUSE_SECS: std::ops::RangeInclusive<u64> = 2..=15;
/// How long a store stays full, in seconds (seeded within).
pub const DISK_FULL_SECS: std::ops::RangeInclusive<u64> = 3..=8;
/// How long a link stays lossy, in seconds (seeded within).
pub const LOSSY_SECS: std::ops::RangeInclusive<u64> = 5..=12;
/// The share of packets a lossy link drops, in percent (seeded within).
pub const LOSS_PERCENT: std::ops::RangeInclusive<u8> = 5..=30;

/// The streams whose leader a `node-kill` fault kills, in turn: events,
/// requests (the work queue), and the sessions bucket's stream.
pub fn leader_streams() -> [String; 3] {
    [
        protocol::subjects::EVENTS_STREAM.to_string(),
        protocol::subjects::REQUESTS_STREAM.to_string(),
        format!("KV_{}", protocol::subjects::SESSIONS_BUCKET),
    ]
}

/// How long a partition or a gateway cut lasts.
pub const CUT_HOLD: Duration = Duration::from_secs(4);

impl FaultKind {
    pub const ALL: [FaultKind; 11] = [
        FaultKind::Drop,
        FaultKind::Gateway,
        FaultKind::Worker,
        FaultKind::Nats,
        FaultKind::NodeKill,
        FaultKind::Partition,
        FaultKind::GatewayCut,
        FaultKind::Rolling,
        FaultKind::Pause,
        FaultKind::DiskFull,
        FaultKind::LossyLink,
    ];

    /// What `--cluster` injects by default: every kind but the single
    /// server's restart. `node-kill` first: a count one above a multiple of
    /// the kinds gives it the extra turn (one kill per leader stream).
    pub const CLUSTER: [FaultKind; 10] = [
        FaultKind::NodeKill,
        FaultKind::Partition,
        FaultKind::GatewayCut,
        FaultKind::Rolling,
        FaultKind::Drop,
        FaultKind::Gateway,
        FaultKind::Worker,
        FaultKind::Pause,
        FaultKind::DiskFull,
        FaultKind::LossyLink,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            FaultKind::Drop => "drop",
            FaultKind::Gateway => "gateway",
            FaultKind::Worker => "worker",
            FaultKind::Nats => "nats",
            FaultKind::NodeKill => "node-kill",
            FaultKind::Partition => "partition",
            FaultKind::GatewayCut => "gateway-cut",
            FaultKind::Rolling => "rolling",
            FaultKind::Pause => "pause",
            FaultKind::DiskFull => "disk-full",
            FaultKind::LossyLink => "lossy-link",
        }
    }

    /// Whether it lasts a seeded while ([`Fault::hold`]): the slow, grey
    /// kinds, which a run gives more time.
    pub fn is_grey(&self) -> bool {
        matches!(
            self,
            FaultKind::Pause | FaultKind::DiskFull | FaultKind::LossyLink
        )
    }

    /// Whether injecting it needs control of the processes (a stack the
    /// tool started itself).
    pub fn needs_processes(&self) -> bool {
        !matches!(self, FaultKind::Drop)
    }

    /// Whether it needs a cluster (`--cluster`).
    pub fn needs_cluster(&self) -> bool {
        matches!(
            self,
            FaultKind::NodeKill | FaultKind::Partition | FaultKind::GatewayCut | FaultKind::Rolling
        )
    }

    /// Whether it cuts the network, which needs hosts of their own
    /// (namespaces): not possible on loopback.
    pub fn needs_namespaces(&self) -> bool {
        matches!(self, FaultKind::Partition | FaultKind::GatewayCut)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "drop" | "drop-socket" | "socket" => Ok(FaultKind::Drop),
            "gateway" | "gw" => Ok(FaultKind::Gateway),
            "worker" => Ok(FaultKind::Worker),
            "nats" | "nats-server" => Ok(FaultKind::Nats),
            "node-kill" | "leader" => Ok(FaultKind::NodeKill),
            "partition" => Ok(FaultKind::Partition),
            "gateway-cut" => Ok(FaultKind::GatewayCut),
            "rolling" | "rolling-restart" => Ok(FaultKind::Rolling),
            "pause" | "sigstop" => Ok(FaultKind::Pause),
            "disk-full" | "disk" => Ok(FaultKind::DiskFull),
            "lossy-link" | "lossy" | "loss" => Ok(FaultKind::LossyLink),
            other => Err(format!(
                "unknown fault kind {other:?} (drop, gateway, worker, nats, \
                 node-kill, partition, gateway-cut, rolling, pause, disk-full, \
                 lossy-link)"
            )),
        }
    }
}

/// One fault of a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// When, from the start of the run.
    #[serde(rename = "at_ms", serialize_with = "as_millis")]
    pub at: Duration,
    pub kind: FaultKind,
    /// The gateway or worker index; for `drop`, the session indices whose
    /// sockets are dropped; for `node-kill`, the index in
    /// [`leader_streams`] of the stream whose leader dies; for
    /// `partition`, the node index; for `nats` and `rolling`, empty; for
    /// `pause`, `disk-full` and `lossy-link`, the index [`Fault::process`]
    /// says is of what.
    pub targets: Vec<usize>,
    /// What a `pause`, `disk-full` or `lossy-link` hits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// How long a `pause`, `disk-full` or `lossy-link` lasts.
    #[serde(
        rename = "hold_ms",
        serialize_with = "opt_millis",
        skip_serializing_if = "Option::is_none"
    )]
    pub hold: Option<Duration>,
    /// The share of packets a `lossy-link` drops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_percent: Option<u8>,
}

impl Fault {
    /// A fault without the grey kinds' fields.
    pub fn new(at: Duration, kind: FaultKind, targets: Vec<usize>) -> Self {
        Self {
            at,
            kind,
            targets,
            process: None,
            hold: None,
            loss_percent: None,
        }
    }

    /// `gateway 1`, `the CHAT_EVENTS leader`, `node n2` …
    pub fn process_name(&self) -> String {
        let index = self.targets.first().copied().unwrap_or(0);
        match self.process {
            None => String::new(),
            Some(p @ (Process::Gateway | Process::Worker)) => format!("{p} {index}"),
            Some(Process::Node) => format!("node n{}", index + 1),
            Some(p) => p.to_string(),
        }
    }
}

fn opt_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => as_millis(d, s),
        None => s.serialize_none(),
    }
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{:>6.2}s ", self.at.as_secs_f64())?;
        match self.kind {
            FaultKind::Drop => write!(f, "drop the sockets of {} session(s)", self.targets.len()),
            FaultKind::Gateway => write!(f, "SIGKILL + restart gateway {:?}", self.targets),
            FaultKind::Worker => write!(f, "SIGKILL + restart worker {:?}", self.targets),
            FaultKind::Nats => write!(f, "restart nats-server"),
            FaultKind::NodeKill => {
                let stream = self
                    .targets
                    .first()
                    .and_then(|i| leader_streams().get(*i).cloned())
                    .unwrap_or_default();
                write!(f, "SIGKILL + restart the node leading {stream}")
            }
            FaultKind::Partition => write!(
                f,
                "partition node n{} for {} s",
                self.targets.first().map_or(0, |i| i + 1),
                CUT_HOLD.as_secs()
            ),
            FaultKind::GatewayCut => write!(
                f,
                "cut gateway {:?} off from NATS for {} s",
                self.targets,
                CUT_HOLD.as_secs()
            ),
            FaultKind::Rolling => write!(f, "rolling lame-duck restart of n1, n2, n3"),
            FaultKind::Pause => write!(
                f,
                "SIGSTOP {} for {:.1} s, then SIGCONT",
                self.process_name(),
                self.hold.unwrap_or_default().as_secs_f64()
            ),
            FaultKind::DiskFull => write!(
                f,
                "fill the store of {} for {:.1} s, then free it",
                self.process_name(),
                self.hold.unwrap_or_default().as_secs_f64()
            ),
            FaultKind::LossyLink => write!(
                f,
                "drop {} % of the packets of {}'s NATS links for {:.1} s",
                self.loss_percent.unwrap_or(0),
                self.process_name(),
                self.hold.unwrap_or_default().as_secs_f64()
            ),
        }
    }
}

/// What a schedule is made of.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    /// How many faults in all; the kinds take turns so each appears.
    pub count: usize,
    pub kinds: Vec<FaultKind>,
    /// Faults fall between `start` and `end` of the run, spread out.
    pub start: Duration,
    pub end: Duration,
    pub gateways: usize,
    pub workers: usize,
    /// NATS cluster nodes; 0 for a single nats-server.
    pub nodes: usize,
    pub sessions: usize,
    /// Share of the sessions a `drop` fault hits (at least one).
    pub drop_share: f64,
    /// Whether each gateway is a host of its own (namespaces), so its
    /// links to NATS can be made lossy alone; otherwise a `lossy-link`
    /// hits a node's links (or the single server's).
    pub gateway_hosts: bool,
}

/// A seeded schedule, in time order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Schedule {
    pub seed: u64,
    pub faults: Vec<Fault>,
}

impl Schedule {
    /// The schedule for `seed`. Kinds that have nothing to hit (no gateway,
    /// no worker, no session) are left out.
    pub fn generate(seed: u64, plan: &FaultPlan) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let kinds: Vec<FaultKind> = plan
            .kinds
            .iter()
            .copied()
            .filter(|k| match k {
                FaultKind::Drop => plan.sessions > 0,
                FaultKind::Gateway => plan.gateways > 0,
                FaultKind::Worker => plan.workers > 0,
                FaultKind::Nats => plan.nodes == 0,
                FaultKind::NodeKill | FaultKind::Rolling | FaultKind::Partition => plan.nodes > 0,
                FaultKind::GatewayCut => plan.nodes > 0 && plan.gateways > 0,
                FaultKind::Pause | FaultKind::DiskFull | FaultKind::LossyLink => true,
            })
            .collect();
        if kinds.is_empty() || plan.count == 0 {
            return Self {
                seed,
                faults: Vec::new(),
            };
        }
        let mut order: Vec<FaultKind> = (0..plan.count).map(|i| kinds[i % kinds.len()]).collect();
        order.shuffle(&mut rng);
        // One fault per equal slot of the window, at a random point in it:
        // spread out, so a restart is over before the next fault.
        let window = plan.end.saturating_sub(plan.start);
        let slot = window / u32::try_from(plan.count).unwrap_or(u32::MAX);
        let mut leader_kills = 0;
        let mut grey = GreyTurns::default();
        let faults = order
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                let offset = slot.mul_f64(rng.random_range(0.1..0.9));
                let at = plan.start + slot * u32::try_from(i).unwrap_or(u32::MAX) + offset;
                let targets = match kind {
                    FaultKind::Drop => {
                        let n = ((plan.sessions as f64 * plan.drop_share).ceil() as usize)
                            .clamp(1, plan.sessions);
                        let mut all: Vec<usize> = (0..plan.sessions).collect();
                        all.shuffle(&mut rng);
                        all.truncate(n);
                        all.sort_unstable();
                        all
                    }
                    FaultKind::Gateway => vec![rng.random_range(0..plan.gateways)],
                    FaultKind::Worker => vec![rng.random_range(0..plan.workers)],
                    FaultKind::Nats | FaultKind::Rolling => Vec::new(),
                    FaultKind::NodeKill => {
                        leader_kills += 1;
                        vec![(leader_kills - 1) % leader_streams().len()]
                    }
                    FaultKind::Partition => vec![rng.random_range(0..plan.nodes)],
                    FaultKind::GatewayCut => vec![rng.random_range(0..plan.gateways)],
                    FaultKind::Pause | FaultKind::DiskFull | FaultKind::LossyLink => {
                        return grey.fault(&mut rng, plan, at, kind);
                    }
                };
                Fault::new(at, kind, targets)
            })
            .collect();
        Self { seed, faults }
    }
}

/// Whose turn it is among the processes the grey kinds hit, so a run's
/// pauses and lossy links take turns instead of repeating one target.
#[derive(Default)]
struct GreyTurns {
    pauses: Option<usize>,
    lossy: Option<usize>,
}

impl GreyTurns {
    /// A `pause`, `disk-full` or `lossy-link` fault at `at`: what it hits,
    /// for how long, how lossy.
    fn fault(
        &mut self,
        rng: &mut StdRng,
        plan: &FaultPlan,
        at: Duration,
        kind: FaultKind,
    ) -> Fault {
        let node_or_server = |rng: &mut StdRng| {
            if plan.nodes > 0 {
                (Process::Node, rng.random_range(0..plan.nodes))
            } else {
                (Process::Nats, 0)
            }
        };
        let mut fault = Fault::new(at, kind, Vec::new());
        let (process, index, secs) = match kind {
            FaultKind::Pause => {
                let mut candidates = if plan.nodes > 0 {
                    vec![Process::Leader, Process::Follower]
                } else {
                    vec![Process::Nats]
                };
                if plan.gateways > 0 {
                    candidates.push(Process::Gateway);
                }
                if plan.workers > 0 {
                    candidates.push(Process::Worker);
                }
                let turn = next_turn(&mut self.pauses, rng, candidates.len());
                let process = candidates[turn];
                let index = match process {
                    Process::Gateway => rng.random_range(0..plan.gateways),
                    Process::Worker => rng.random_range(0..plan.workers),
                    Process::Follower => rng.random_range(0..2),
                    _ => 0,
                };
                (process, index, rng.random_range(PAUSE_SECS))
            }
            FaultKind::DiskFull => {
                let (process, index) = node_or_server(rng);
                (process, index, rng.random_range(DISK_FULL_SECS))
            }
            _ => {
                let gateway = plan.gateway_hosts
                    && plan.gateways > 0
                    && next_turn(&mut self.lossy, rng, 2) == 1;
                let (process, index) = if gateway {
                    (Process::Gateway, rng.random_range(0..plan.gateways))
                } else {
                    node_or_server(rng)
                };
                fault.loss_percent = Some(rng.random_range(LOSS_PERCENT));
                (process, index, rng.random_range(LOSSY_SECS))
            }
        };
        // Tenths of a second within the range, so holds differ between faults.
        let tenths = rng.random_range(0..10u64);
        fault.process = Some(process);
        fault.targets = vec![index];
        fault.hold = Some(Duration::from_secs(secs) + Duration::from_millis(tenths * 100));
        fault
    }
}

/// The next of `n` turns, starting at a seeded one.
fn next_turn(counter: &mut Option<usize>, rng: &mut StdRng, n: usize) -> usize {
    let next = match counter {
        Some(c) => *c + 1,
        None => rng.random_range(0..n.max(1)),
    };
    *counter = Some(next);
    next % n.max(1)
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fault schedule (seed {}):", self.seed)?;
        for fault in &self.faults {
            writeln!(f, "  {fault}")?;
        }
        Ok(())
    }
}

/// Parses `drop,gateway,worker,nats,node-kill,partition,gateway-cut,rolling`.
pub fn parse_kinds(list: &str) -> Result<Vec<FaultKind>, String> {
    let mut kinds = Vec::new();
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        let kind: FaultKind = part.parse()?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

#[cfg(test)]
mod tests;
