//! Injecting one fault of the schedule into a stack this tool started, or
//! a compose deployment's containers (or, for socket drops, into the
//! clients).

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use stack::loss::LoopbackLoss;
use stack::{NatsCluster, Stack};
use tokio::time::Instant;

use super::containers::ComposeDeployment;
use crate::client::SocketDropper;
use crate::faults::{leader_streams, Fault, FaultKind, Process, CUT_HOLD};

/// nats-server's Raft election timeout is 4–9 s: a leader silent longer
/// than the shortest of it may have been replaced.
const ELECTION_TIMEOUT_MIN: Duration = Duration::from_secs(4);

/// How long a fault aimed at a stream's leader waits for it to have one.
const LEADER_PATIENCE: Duration = Duration::from_secs(15);

/// How long a node whose store was full and freed may take to report
/// itself healthy before it is restarted, as a supervisor watching its
/// `/healthz` would: nats-server does not reopen a stream after a write
/// error, nor enable JetStream again after running out of space.
const HEALTHY_AFTER_FREE: Duration = Duration::from_secs(3);

/// Injects `fault`; returns what it hit when that is not in the schedule
/// (the node a `node-kill` found leading its stream).
pub(crate) async fn inject(
    fault: &Fault,
    stack: Option<&mut Stack>,
    compose: Option<&ComposeDeployment>,
    droppers: &[SocketDropper],
) -> anyhow::Result<Option<String>> {
    if fault.kind == FaultKind::Drop {
        for i in &fault.targets {
            if let Some(d) = droppers.get(*i) {
                d.drop_socket();
            }
        }
        return Ok(None);
    }
    if let Some(deployment) = compose {
        return super::containers::inject(fault, deployment).await;
    }
    let Some(stack) = stack else {
        bail!("{} faults need a stack this tool started", fault.kind);
    };
    let target = fault.targets.first().copied().unwrap_or(0);
    match fault.kind {
        FaultKind::Drop => {}
        FaultKind::Gateway => {
            stack.kill_gateway(target)?;
            stack.restart_gateway(target).await?;
        }
        FaultKind::Worker => {
            stack.kill_worker(target)?;
            stack.restart_worker(target).await?;
        }
        FaultKind::Nats => tokio::task::block_in_place(|| stack.restart_nats())?,
        FaultKind::NodeKill => {
            let stream = leader_streams()
                .get(target)
                .cloned()
                .ok_or_else(|| anyhow!("no leader stream {target}"))?;
            let cluster = cluster(stack)?;
            let leader = leader_when_known(cluster, &stream).await?;
            cluster.kill(leader)?;
            cluster.restart(leader).await?;
            return Ok(Some(format!("{} led {stream}", cluster.node_name(leader))));
        }
        FaultKind::Partition => {
            let cluster = cluster(stack)?;
            cluster.partition(target)?;
            tokio::time::sleep(CUT_HOLD).await;
            cluster.heal(target)?;
        }
        FaultKind::GatewayCut => {
            stack.cut_gateway_from_nats(target)?;
            tokio::time::sleep(CUT_HOLD).await;
            stack.heal_gateway(target)?;
        }
        FaultKind::Rolling => {
            let cluster = cluster(stack)?;
            for node in 0..stack::cluster::NODES {
                cluster
                    .lame_duck_restart(node)
                    .await
                    .with_context(|| format!("lame-duck restart of {}", cluster.node_name(node)))?;
            }
        }
        FaultKind::Pause => return pause(fault, stack).await.map(Some),
        FaultKind::DiskFull => return disk_full(fault, stack).await.map(Some),
        FaultKind::LossyLink => return lossy_link(fault, stack).await.map(Some),
    }
    Ok(None)
}

/// Who leads `stream`. Right after another fault (a node restarted, a
/// partition healed) or the cluster's start, the stream may still be
/// electing: ask again for a while.
async fn leader_when_known(cluster: &NatsCluster, stream: &str) -> anyhow::Result<usize> {
    let asked = Instant::now();
    loop {
        match cluster.leader_of(stream).await {
            Ok(leader) => return Ok(leader),
            Err(e) if asked.elapsed() > LEADER_PATIENCE => {
                return Err(e).with_context(|| format!("asking who leads {stream}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn hold(fault: &Fault) -> Duration {
    fault.hold.unwrap_or(Duration::from_secs(2))
}

/// SIGSTOP, wait, SIGCONT. Says what was paused and, for a node that led
/// `CHAT_EVENTS`, whether the pause outlasted the election timeout.
async fn pause(fault: &Fault, stack: &mut Stack) -> anyhow::Result<String> {
    let target = fault.targets.first().copied().unwrap_or(0);
    let hold = hold(fault);
    let process = fault.process.unwrap_or(Process::Nats);
    let node = match process {
        Process::Leader | Process::Follower | Process::Node => {
            let cluster = cluster(stack)?;
            let leader = leader_when_known(cluster, protocol::subjects::EVENTS_STREAM).await?;
            Some(match process {
                Process::Leader => leader,
                Process::Follower => {
                    let followers: Vec<usize> = (0..stack::cluster::NODES)
                        .filter(|n| *n != leader)
                        .collect();
                    followers[target % followers.len()]
                }
                _ => target,
            })
        }
        _ => None,
    };
    let what = match node {
        Some(n) => {
            let c = cluster(stack)?;
            c.pause(n)?;
            let name = c.node_name(n);
            if process == Process::Leader {
                format!("{name}, leading CHAT_EVENTS")
            } else {
                format!("{name}, a follower")
            }
        }
        None => {
            match process {
                Process::Gateway => stack.pause_gateway(target)?,
                Process::Worker => stack.pause_worker(target)?,
                _ => stack
                    .nats_mut()
                    .ok_or_else(|| anyhow!("no single nats-server"))?
                    .freeze()?,
            }
            fault.process_name()
        }
    };
    tokio::time::sleep(hold).await;
    match (node, process) {
        (Some(n), _) => cluster(stack)?.resume(n)?,
        (None, Process::Gateway) => stack.resume_gateway(target)?,
        (None, Process::Worker) => stack.resume_worker(target)?,
        (None, _) => stack
            .nats_mut()
            .ok_or_else(|| anyhow!("no single nats-server"))?
            .thaw()?,
    }
    let election = match (process, node) {
        (Process::Leader, Some(paused)) => {
            // Who leads now says whether the others elected a new leader
            // while it slept (their timers run out after 4–9 s).
            let stream = protocol::subjects::EVENTS_STREAM;
            match cluster(stack)?.leader_of(stream).await {
                Ok(now) if now != paused => format!(
                    "; {} leads now: an election (the pause outlasted a follower's election timer)",
                    cluster(stack)?.node_name(now)
                ),
                Ok(_) if hold > ELECTION_TIMEOUT_MIN => {
                    "; it still leads: no follower's election timer ran out, or it won again"
                        .to_string()
                }
                Ok(_) => "; it still leads: shorter than any election timer".to_string(),
                Err(e) => format!("; who leads now is unknown ({e:#})"),
            }
        }
        _ => String::new(),
    };
    Ok(format!(
        "paused {what} for {:.1} s{election}",
        hold.as_secs_f64()
    ))
}

/// Fills a node's store, waits, frees it, and restarts the node when it
/// does not report itself healthy soon after (see [`HEALTHY_AFTER_FREE`]).
async fn disk_full(fault: &Fault, stack: &mut Stack) -> anyhow::Result<String> {
    let node = match fault.process {
        Some(Process::Node) => Some(fault.targets.first().copied().unwrap_or(0)),
        _ => None,
    };
    let name = fault.process_name();
    let filled = match node {
        Some(n) => cluster(stack)?.fill_store(n)?,
        None => single_disk(stack)?.fill()?,
    };
    tokio::time::sleep(hold(fault)).await;
    match node {
        Some(n) => cluster(stack)?.free_store(n)?,
        None => single_disk(stack)?.free()?,
    }
    let freed = Instant::now();
    let verdict = loop {
        let health = match node {
            Some(n) => cluster(stack)?.health(n).await,
            None => single_health(stack).await,
        };
        match health {
            Ok(()) => break None,
            Err(said) if freed.elapsed() >= HEALTHY_AFTER_FREE => break Some(said),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let ballast = format!(
        "{name}'s store filled ({} MiB ballast) for {:.1} s",
        filled >> 20,
        hold(fault).as_secs_f64()
    );
    let Some(said) = verdict else {
        return Ok(format!("{ballast}; healthy again by itself"));
    };
    match node {
        Some(n) => cluster(stack)?.restart(n).await?,
        None => tokio::task::block_in_place(|| stack.restart_nats())?,
    }
    let said: String = said.chars().take(160).collect();
    Ok(format!(
        "{ballast}; still unhealthy {} s after it was freed ({said}): restarted as a supervisor would",
        HEALTHY_AFTER_FREE.as_secs()
    ))
}

fn single_disk(stack: &mut Stack) -> anyhow::Result<&stack::disk::SmallDisk> {
    stack
        .nats()
        .and_then(stack::NatsServer::disk)
        .ok_or_else(|| anyhow!("the nats-server's store has no filesystem of its own"))
}

async fn single_health(stack: &Stack) -> Result<(), String> {
    let url = format!("{}/healthz", stack.monitor_url());
    match stack::http_get(&url).await {
        Ok((200, _)) => Ok(()),
        Ok((status, body)) => Err(format!("{status}: {}", body.trim())),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Drops a share of the packets of one node's links (or every link to the
/// single nats-server), or of a gateway's links to NATS, for a while.
async fn lossy_link(fault: &Fault, stack: &mut Stack) -> anyhow::Result<String> {
    let target = fault.targets.first().copied().unwrap_or(0);
    let percent = fault.loss_percent.unwrap_or(10);
    let name = fault.process_name();
    let namespaced = stack.cluster().is_some_and(NatsCluster::namespaced);
    let how = match fault.process {
        Some(Process::Gateway) => {
            stack.lossy_gateway(target, percent)?;
            tokio::time::sleep(hold(fault)).await;
            stack.heal_lossy_gateway(target)?;
            "its links to every node"
        }
        Some(Process::Node) if namespaced => {
            let c = cluster(stack)?;
            c.lossy(target, percent)?;
            tokio::time::sleep(hold(fault)).await;
            c.heal_lossy(target)?;
            "every link of its host"
        }
        Some(Process::Node) => {
            let ports = cluster(stack)?.node_ports(target);
            let loss = LoopbackLoss::start(&ports, percent)?;
            tokio::time::sleep(hold(fault)).await;
            drop(loss);
            "its client and route ports on loopback"
        }
        _ => {
            let port = stack
                .nats()
                .map(stack::NatsServer::port)
                .ok_or_else(|| anyhow!("no single nats-server"))?;
            let loss = LoopbackLoss::start(&[port], percent)?;
            tokio::time::sleep(hold(fault)).await;
            drop(loss);
            "its client port on loopback: every link to it"
        }
    };
    Ok(format!(
        "{percent} % of the packets of {name} dropped ({how}) for {:.1} s",
        hold(fault).as_secs_f64()
    ))
}

fn cluster(stack: &mut Stack) -> anyhow::Result<&mut NatsCluster> {
    stack
        .cluster_mut()
        .ok_or_else(|| anyhow!("this fault needs --cluster"))
}
