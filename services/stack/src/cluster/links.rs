//! Faults on a node's links (needs namespaces): lossy links, a partition
//! from everyone, an isolation from the other nodes only, and their heals.

use std::net::Ipv4Addr;

use anyhow::anyhow;

use super::NatsCluster;
use crate::hosts::{Host, HostNetwork};

impl NatsCluster {
    /// Makes every link of node `i` (to clients and to the other nodes)
    /// drop `percent` % of its packets until [`NatsCluster::heal_lossy`].
    pub fn lossy(&mut self, i: usize, percent: u8) -> anyhow::Result<()> {
        let (host, network) = self.host_network(i, "making a node's links lossy")?;
        network.lossy(&host, &[], percent)
    }

    /// Ends [`NatsCluster::lossy`].
    pub fn heal_lossy(&mut self, i: usize) -> anyhow::Result<()> {
        let (host, network) = self.host_network(i, "making a node's links lossy")?;
        network.heal_lossy(&host)
    }

    /// Cuts node `i` off from the other nodes and from every client: its
    /// packets are dropped both ways until [`NatsCluster::heal`].
    pub fn partition(&mut self, i: usize) -> anyhow::Result<()> {
        let (host, network) = self.host_network(i, "a partition")?;
        network.cut_off(&host, &[])
    }

    /// Cuts node `i` off from the other nodes only: its clients still
    /// reach it, and it goes on answering their direct gets from what it
    /// holds while the others store on without it (a replica falling
    /// behind). Ended by [`NatsCluster::heal`].
    pub fn isolate(&mut self, i: usize) -> anyhow::Result<()> {
        let peers: Vec<Ipv4Addr> = self
            .node_addrs()
            .into_iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, ip)| ip)
            .collect();
        let (host, network) = self.host_network(i, "isolating a node")?;
        network.cut_off(&host, &peers)
    }

    /// Ends a partition (or an isolation) of node `i`.
    pub fn heal(&mut self, i: usize) -> anyhow::Result<()> {
        let (host, network) = self.host_network(i, "a partition")?;
        network.heal(&host)
    }

    /// Node `i`'s host and the network it is on; `fault` says what needed
    /// them when the nodes run on loopback.
    fn host_network(&mut self, i: usize, fault: &str) -> anyhow::Result<(Host, &HostNetwork)> {
        let node = self.node(i)?;
        let host = node
            .host
            .clone()
            .ok_or_else(|| anyhow!("{} runs on loopback: partitions need namespaces", node.name))?;
        let network = self
            .network
            .as_ref()
            .ok_or_else(|| anyhow!("{fault} needs namespaces"))?;
        Ok((host, network))
    }
}
