//! Injecting one fault of the schedule into a stack this tool started, or
//! a compose deployment's containers (or, for socket drops, into the
//! clients).

use anyhow::{anyhow, bail, Context};
use stack::{NatsCluster, Stack};

use super::containers::ComposeDeployment;
use crate::client::SocketDropper;
use crate::faults::{leader_streams, Fault, FaultKind, CUT_HOLD};

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
            let leader = cluster
                .leader_of(&stream)
                .await
                .with_context(|| format!("asking who leads {stream}"))?;
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
    }
    Ok(None)
}

fn cluster(stack: &mut Stack) -> anyhow::Result<&mut NatsCluster> {
    stack
        .cluster_mut()
        .ok_or_else(|| anyhow!("this fault needs --cluster"))
}
