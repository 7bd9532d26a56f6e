//! The summary of a recovery run: what was checked and injected, every
//! broken guarantee, and how long each kind of fault kept clients waiting.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use stack::NatsCluster;
use tokio::time::Instant;

use crate::client::SessionLog;
use crate::faults::{Fault, FaultKind, Process};
use crate::verify::{Violation, ViolationKind};

/// How long faults kept the clients they hit waiting.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecoveryTimes {
    pub faults: usize,
    /// Clients with a question in flight that the faults hit.
    pub affected_clients: usize,
    /// From a fault to the first event an affected client received after it.
    pub longest_ms: u64,
    /// The longest an affected client with a question in flight waited for
    /// an event, among the waits that began while the fault lasted (from
    /// its injection to the end of its `took_ms`).
    pub longest_silence_ms: u64,
}

/// A fault as it was injected.
#[derive(Clone, Debug, Serialize)]
pub struct Injected {
    #[serde(flatten)]
    pub fault: Fault,
    /// From the start of the run to the injection (later than planned when
    /// an earlier restart took long).
    pub injected_at_ms: u64,
    /// How long the kill + restart took.
    pub took_ms: u64,
    /// What it hit, when the schedule could not say (the node a
    /// `node-kill` found leading its stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A stream as one node holds it after the run.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReplicaCount {
    pub node: String,
    pub stream: String,
    pub messages: u64,
    pub last_seq: u64,
}

/// Whether a cluster's replicas agree after the run: every node, asked on
/// its own monitoring endpoint, holds every stream with the same message
/// count and last sequence.
#[derive(Clone, Debug, Serialize)]
pub struct Replicas {
    pub converged: bool,
    /// How long they took to agree, from the end of the run.
    pub waited_ms: u64,
    pub streams: Vec<ReplicaCount>,
    /// Nodes that did not answer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Replicas {
    /// Waits up to `timeout` for the replicas to agree, then reports.
    pub async fn check(cluster: &NatsCluster, timeout: Duration) -> Self {
        let started = Instant::now();
        let (converged, views) = cluster.wait_converged(timeout).await;
        let mut streams = Vec::new();
        let mut errors = Vec::new();
        for (node, view) in views {
            match view {
                Ok(view) => {
                    for (stream, state) in view {
                        streams.push(ReplicaCount {
                            node: node.clone(),
                            stream,
                            messages: state.messages,
                            last_seq: state.last_seq,
                        });
                    }
                }
                Err(e) => errors.push(format!("{node}: {e:#}")),
            }
        }
        streams.sort_by(|a, b| (&a.stream, &a.node).cmp(&(&b.stream, &b.node)));
        Self {
            converged,
            waited_ms: millis(started.elapsed()),
            streams,
            errors,
        }
    }
}

/// The summary of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub sessions: usize,
    pub turns: usize,
    pub messages: usize,
    pub events_checked: usize,
    /// Stored events of a superseded attempt that clients ignore as
    /// PROTOCOL.md says ([`crate::verify::as_a_client_acts_on`]).
    pub stale_events: usize,
    pub reconnects: u64,
    /// Closes with 1012/1013 the clients got
    /// ([`protocol::CloseCode::ServiceRestart`], [`protocol::CloseCode::TryAgainLater`]).
    pub restart_closes: u64,
    pub faults_injected: BTreeMap<FaultKind, usize>,
    pub faults: Vec<Injected>,
    pub violations_by_kind: BTreeMap<ViolationKind, usize>,
    /// The first violations in full.
    pub violations: Vec<Violation>,
    pub recovery: BTreeMap<FaultKind, RecoveryTimes>,
    /// A cluster's replicas after the run (`None` for one nats-server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
    /// Where a cluster's nodes, gateways and workers ran: `namespaces`
    /// (hosts of their own) or `loopback (why)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_hosts: Option<String>,
    pub elapsed_ms: u64,
}

/// How many violations a report lists in full.
pub(super) const VIOLATIONS_LISTED: usize = 25;

impl Report {
    pub fn violation_count(&self) -> usize {
        self.violations_by_kind.values().sum()
    }

    pub fn failed_faults(&self) -> usize {
        self.faults.iter().filter(|f| f.error.is_some()).count()
    }

    /// No violation, every fault injected, and a cluster's replicas agree.
    pub fn passed(&self) -> bool {
        self.violation_count() == 0
            && self.failed_faults() == 0
            && self.replicas.as_ref().is_none_or(|r| r.converged)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(md, "## chatctl recovery: {verdict} (seed {})\n", self.seed);
        let _ = writeln!(md, "| what | value |\n| --- | --- |");
        for (what, value) in [
            ("sessions", self.sessions.to_string()),
            ("turns per session", self.turns.to_string()),
            ("messages", self.messages.to_string()),
            ("events checked", self.events_checked.to_string()),
            (
                "stale events (a superseded attempt's, ignored by clients)",
                self.stale_events.to_string(),
            ),
            ("client reconnects", self.reconnects.to_string()),
            ("1012/1013 closes", self.restart_closes.to_string()),
            ("violations", self.violation_count().to_string()),
            (
                "NATS",
                self.cluster_hosts
                    .as_deref()
                    .map_or("one nats-server".to_string(), |h| {
                        format!("3-node cluster, R3, on {h}")
                    }),
            ),
            (
                "faults that failed to inject",
                self.failed_faults().to_string(),
            ),
            (
                "elapsed",
                format!("{:.1} s", self.elapsed_ms as f64 / 1000.0),
            ),
        ] {
            let _ = writeln!(md, "| {what} | {value} |");
        }
        let _ = writeln!(
            md,
            "\n| fault | injected | affected clients | longest recovery | longest silence while it lasted |\n| --- | --- | --- | --- | --- |"
        );
        let planned: Vec<FaultKind> = FaultKind::ALL
            .into_iter()
            .filter(|k| self.faults.iter().any(|f| f.fault.kind == *k))
            .collect();
        for kind in planned {
            let injected = self.faults_injected.get(&kind).copied().unwrap_or(0);
            let times = self.recovery.get(&kind).cloned().unwrap_or_default();
            let (longest, silence) = if times.affected_clients == 0 {
                ("–".to_string(), "–".to_string())
            } else {
                (
                    format!("{} ms", times.longest_ms),
                    format!("{} ms", times.longest_silence_ms),
                )
            };
            let _ = writeln!(
                md,
                "| {kind} | {injected} | {} | {longest} | {silence} |",
                times.affected_clients
            );
        }
        if let Some(replicas) = &self.replicas {
            let verdict = if replicas.converged {
                format!("converged (within {} ms)", replicas.waited_ms)
            } else {
                "DIVERGED".to_string()
            };
            let _ = writeln!(
                md,
                "\nReplicas: {verdict}\n\n| stream | node | messages | last seq |\n| --- | --- | --- | --- |"
            );
            for r in &replicas.streams {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    r.stream, r.node, r.messages, r.last_seq
                );
            }
            for e in &replicas.errors {
                let _ = writeln!(md, "- no answer: {e}");
            }
        }
        let _ = writeln!(md, "\n| violation | count |\n| --- | --- |");
        if self.violations_by_kind.is_empty() {
            let _ = writeln!(md, "| none | 0 |");
        }
        for (kind, count) in &self.violations_by_kind {
            let _ = writeln!(md, "| {kind} | {count} |");
        }
        if !self.violations.is_empty() {
            let _ = writeln!(md, "\nFirst violations:");
            for v in &self.violations {
                let _ = writeln!(md, "- {v}");
            }
        }
        let grey: Vec<&Injected> = self
            .faults
            .iter()
            .filter(|f| f.fault.kind.is_grey() && f.error.is_none())
            .collect();
        if !grey.is_empty() {
            let _ = writeln!(md, "\nGrey faults as injected:");
            for f in grey {
                let _ = writeln!(
                    md,
                    "- +{:.1} s {}: {}",
                    f.injected_at_ms as f64 / 1000.0,
                    f.fault.kind,
                    f.detail.as_deref().unwrap_or("")
                );
            }
        }
        let failed: Vec<&Injected> = self.faults.iter().filter(|f| f.error.is_some()).collect();
        if !failed.is_empty() {
            let _ = writeln!(md, "\nFaults that failed:");
            for f in failed {
                let _ = writeln!(md, "- {}: {}", f.fault, f.error.as_deref().unwrap_or(""));
            }
        }
        md
    }
}

/// For each fault kind: the longest wait, from a fault to the first event
/// an affected client received after it. Affected: clients with a question
/// in flight at the fault and, for a socket drop, among the targets; for a
/// gateway kill or cut, attached to that gateway; for a worker kill or any
/// NATS fault, all of them (the longest wait is that of the ones it hit).
pub fn recovery_times(
    injected: &[(Injected, Instant)],
    logs: &[SessionLog],
    gateway_nodes: &[String],
) -> BTreeMap<FaultKind, RecoveryTimes> {
    let mut out: BTreeMap<FaultKind, RecoveryTimes> = BTreeMap::new();
    for (fault, at) in injected {
        if fault.error.is_some() {
            continue;
        }
        let kind = fault.fault.kind;
        let entry = out.entry(kind).or_default();
        entry.faults += 1;
        let on_gateway = |log: &SessionLog| {
            fault
                .fault
                .targets
                .first()
                .and_then(|i| gateway_nodes.get(*i))
                .is_some_and(|node| log.node_at(*at) == Some(node.as_str()))
        };
        for (index, log) in logs.iter().enumerate() {
            if !log.in_flight_at(*at) {
                continue;
            }
            let hit = match kind {
                FaultKind::Drop => fault.fault.targets.contains(&index),
                FaultKind::Gateway | FaultKind::GatewayCut => on_gateway(log),
                FaultKind::Pause | FaultKind::LossyLink
                    if fault.fault.process == Some(Process::Gateway) =>
                {
                    on_gateway(log)
                }
                FaultKind::Worker
                | FaultKind::Nats
                | FaultKind::NodeKill
                | FaultKind::Partition
                | FaultKind::Rolling
                | FaultKind::Pause
                | FaultKind::DiskFull
                | FaultKind::LossyLink => true,
            };
            if !hit {
                continue;
            }
            if let Some(next) = log.first_event_after(*at) {
                entry.affected_clients += 1;
                entry.longest_ms = entry.longest_ms.max(millis(next - *at));
            }
            let lasted = *at + Duration::from_millis(fault.took_ms);
            if let Some(silence) = log.longest_silence(*at, lasted) {
                entry.longest_silence_ms = entry.longest_silence_ms.max(millis(silence));
            }
        }
    }
    out
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Asked, Attachment, Received};
    use protocol::frames::SequencedEvent;
    use protocol::{Event, MessageId};

    fn log(t0: Instant, node: &str, events_ms: &[u64]) -> SessionLog {
        let at = |ms| t0 + Duration::from_millis(ms);
        let id = MessageId::new();
        SessionLog {
            received: events_ms
                .iter()
                .map(|ms| Received {
                    at: at(*ms),
                    event: SequencedEvent {
                        seq: *ms,
                        event: Event::Cancelled { message_id: id },
                    },
                })
                .collect(),
            asked: vec![Asked {
                message_id: id,
                prompt: "p".into(),
                sent_at: at(0),
                finished_at: events_ms.last().map(|ms| at(*ms)),
            }],
            attachments: vec![Attachment {
                at: at(0),
                node: node.into(),
            }],
            ..Default::default()
        }
    }

    fn fault(kind: FaultKind, targets: Vec<usize>) -> Injected {
        Injected {
            fault: Fault::new(Duration::ZERO, kind, targets),
            injected_at_ms: 0,
            took_ms: 0,
            detail: None,
            error: None,
        }
    }

    #[test]
    fn recovery_counts_only_the_clients_a_fault_hit() {
        let t0 = Instant::now();
        let logs = vec![
            log(t0, "gw-0", &[100, 900, 1000]),
            log(t0, "gw-1", &[100, 300, 1000]),
        ];
        let nodes = vec!["gw-0".to_string(), "gw-1".to_string()];
        let at = t0 + Duration::from_millis(200);
        let times = recovery_times(
            &[
                (fault(FaultKind::Gateway, vec![1]), at),
                (fault(FaultKind::Drop, vec![0]), at),
                (fault(FaultKind::Nats, vec![]), at),
            ],
            &logs,
            &nodes,
        );
        assert_eq!(times[&FaultKind::Gateway].affected_clients, 1);
        assert_eq!(times[&FaultKind::Gateway].longest_ms, 100);
        assert_eq!(times[&FaultKind::Drop].longest_ms, 700);
        assert_eq!(times[&FaultKind::Nats].affected_clients, 2);
        assert_eq!(times[&FaultKind::Nats].longest_ms, 700);
        // A paused gateway hits only its clients; the silence counts the
        // waits that began while the pause lasted.
        let mut pause = fault(FaultKind::Pause, vec![0]);
        pause.fault.process = Some(Process::Gateway);
        pause.took_ms = 800;
        let early = t0 + Duration::from_millis(50);
        let times = recovery_times(&[(pause, early)], &logs, &nodes);
        let paused = &times[&FaultKind::Pause];
        assert_eq!((paused.affected_clients, paused.longest_ms), (1, 50));
        assert_eq!(paused.longest_silence_ms, 800);
    }

    #[test]
    fn the_report_renders_and_fails_on_violations() {
        let mut report = Report {
            seed: 1,
            sessions: 2,
            turns: 1,
            messages: 2,
            events_checked: 10,
            stale_events: 0,
            reconnects: 0,
            restart_closes: 0,
            faults_injected: BTreeMap::new(),
            faults: Vec::new(),
            violations_by_kind: BTreeMap::new(),
            violations: Vec::new(),
            recovery: BTreeMap::new(),
            replicas: None,
            cluster_hosts: None,
            elapsed_ms: 5,
        };
        assert!(report.passed());
        assert!(report.to_markdown().contains("PASS"));
        report.violations_by_kind.insert(ViolationKind::Gap, 2);
        assert!(!report.passed());
        let md = report.to_markdown();
        assert!(md.contains("FAIL") && md.contains("| gap | 2 |"), "{md}");
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["violations_by_kind"]["gap"], 2);
        report.violations_by_kind.clear();
        report.replicas = Some(Replicas {
            converged: false,
            waited_ms: 60_000,
            streams: vec![ReplicaCount {
                node: "n2".into(),
                stream: "CHAT_EVENTS".into(),
                messages: 9,
                last_seq: 9,
            }],
            errors: Vec::new(),
        });
        assert!(!report.passed(), "diverged replicas must fail the run");
        let md = report.to_markdown();
        assert!(
            md.contains("DIVERGED") && md.contains("| CHAT_EVENTS | n2 | 9 | 9 |"),
            "{md}"
        );
    }
}
