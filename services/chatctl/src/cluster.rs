//! `chatctl cluster up|down` (`just cluster up|down`): the 3-node cluster of
//! [`stack::cluster`] left running for an operator, with its state under
//! `run/cluster/`, so `just up`, `just status` and `just down` find it:
//!
//! - `n1.pid` … `n3.pid`: the nodes' pids;
//! - `n1.client-url`, `n1.monitor-url` …: e.g. `nats://10.77.0.11:4222`,
//!   `http://10.77.0.11:8222`;
//! - `urls`: the seed list for `NATS_URL` (every node, comma-separated);
//! - `network`: the namespaces' prefix and subnet, when the nodes are hosts
//!   of their own (so `down` removes them);
//! - `n1.conf` …, `n1/` … (stores) and `logs/n1.log` ….

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use stack::cluster::{operator_network, ClusterOptions, HostsChoice, NatsCluster, NODES};
use stack::hosts::{remove_network, NetworkNames};
use stack::project::project_dir;

/// How long `down` waits for a SIGTERM'd node before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Flags of `chatctl cluster`.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub action: ClusterAction,
    /// The state folder (default: run/cluster of the project).
    #[arg(long, global = true)]
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum ClusterAction {
    /// Start the three nodes (hosts of their own where the machine allows
    /// it) and leave them running.
    Up {
        /// Loopback (ports 4222-4224, 6222-6224, 8222-8224) even where
        /// namespaces work.
        #[arg(long)]
        loopback: bool,
        /// Clients and routes without TLS (it is on by default).
        #[arg(long)]
        plaintext: bool,
    },
    /// Stop the nodes and remove every namespace and link `up` made.
    Down,
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .unwrap_or_else(|| project_dir().join("run/cluster"));
    match args.action {
        ClusterAction::Up {
            loopback,
            plaintext,
        } => up(&dir, loopback, plaintext).await,
        ClusterAction::Down => down(&dir).await,
    }
}

async fn up(dir: &Path, loopback: bool, plaintext: bool) -> anyhow::Result<()> {
    let running: Vec<String> = (1..=NODES)
        .filter(|i| running_pid(&dir.join(format!("n{i}.pid"))).is_some())
        .map(|i| format!("n{i}"))
        .collect();
    if running.len() == NODES {
        println!("cluster: already running ({})", read(&dir.join("urls")));
        return Ok(());
    }
    if !running.is_empty() {
        bail!(
            "cluster: only {} of the nodes run; `just cluster down` first",
            running.join(", ")
        );
    }
    // What a crashed run may have left: its namespaces and bridge.
    remove_network(&operator_network());
    std::fs::create_dir_all(dir)?;
    let cluster = NatsCluster::start(ClusterOptions {
        hosts: if loopback {
            HostsChoice::Loopback
        } else {
            HostsChoice::Auto
        },
        run_dir: Some(dir.to_path_buf()),
        fixed: true,
        sync_interval: std::env::var("NATS_SYNC_INTERVAL")
            .ok()
            .filter(|s| !s.is_empty()),
        plaintext,
        // Next to the cluster's folder (run/credentials), where `just up`
        // finds them for the services it starts against the cluster.
        credentials_dir: Some(credentials_dir(dir)),
        ..Default::default()
    })
    .await?;
    let urls = cluster.client_urls();
    let lines: Vec<String> = (0..NODES)
        .map(|i| {
            format!(
                "cluster: {} clients {} monitoring {}",
                cluster.node_name(i),
                cluster.client_url(i),
                cluster.monitor_url(i)
            )
        })
        .collect();
    for i in 0..NODES {
        let name = cluster.node_name(i);
        write(dir, &format!("{name}.client-url"), &cluster.client_url(i))?;
        write(dir, &format!("{name}.monitor-url"), &cluster.monitor_url(i))?;
    }
    write(dir, "urls", &urls)?;
    let where_ = match cluster.loopback_reason() {
        Some(reason) => format!("on loopback ({reason})"),
        None => {
            "as hosts of their own (network namespaces chatc-n1..n3 on bridge chatcb, 10.77.0.0/24)"
                .to_string()
        }
    };
    let (pids, network) = cluster.detach();
    for (name, pid) in pids {
        write(dir, &format!("{name}.pid"), &pid.to_string())?;
    }
    match network {
        Some(names) => write(dir, "network", &format!("{} {}", names.prefix, names.octet))?,
        None => {
            let _ = std::fs::remove_file(dir.join("network"));
        }
    }
    for line in lines {
        println!("{line}");
    }
    println!("cluster: up {where_}; state in {}", dir.display());
    println!("cluster: now run  NATS_URL={urls} CHAT_REPLICAS=3 just up");
    Ok(())
}

/// The credentials of a cluster whose state is in `dir`: `run/credentials`
/// for `run/cluster`.
pub fn credentials_dir(dir: &Path) -> PathBuf {
    dir.parent().unwrap_or(dir).join("credentials")
}

async fn down(dir: &Path) -> anyhow::Result<()> {
    let mut stopping = Vec::new();
    for i in 1..=NODES {
        let file = dir.join(format!("n{i}.pid"));
        if let Some(pid) = running_pid(&file) {
            println!("cluster: stopping n{i} (pid {pid})");
            let _ = stack::send_signal(pid, "TERM");
            stopping.push(pid);
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    for pid in stopping {
        while is_nats_server(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if is_nats_server(pid) {
            println!("cluster: pid {pid} did not stop within {STOP_TIMEOUT:?}; SIGKILL");
            let _ = stack::send_signal(pid, "KILL");
        }
    }
    let network = std::fs::read_to_string(dir.join("network")).ok();
    if let Some(names) = network.as_deref().and_then(parse_network) {
        remove_network(&names);
        println!(
            "cluster: removed namespaces {}-* and bridge {}b",
            names.prefix, names.prefix
        );
    }
    for i in 1..=NODES {
        for ext in ["pid", "client-url", "monitor-url"] {
            let _ = std::fs::remove_file(dir.join(format!("n{i}.{ext}")));
        }
    }
    let _ = std::fs::remove_file(dir.join("urls"));
    let _ = std::fs::remove_file(dir.join("network"));
    println!("cluster: down");
    Ok(())
}

/// `prefix octet`, as `up` writes it.
fn parse_network(text: &str) -> Option<NetworkNames> {
    let mut parts = text.split_whitespace();
    let prefix = parts.next()?.to_string();
    let octet = parts.next()?.parse().ok()?;
    (!prefix.is_empty()).then_some(NetworkNames { prefix, octet })
}

/// The pid in `file` if that process still runs and is a nats-server (a
/// recycled pid is never signalled).
fn running_pid(file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    is_nats_server(pid).then_some(pid)
}

fn is_nats_server(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim() == "nats-server")
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n"))
        .with_context(|| format!("writing {}", path.display()))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_file_parses() {
        assert_eq!(
            parse_network("chatc 0\n"),
            Some(NetworkNames {
                prefix: "chatc".into(),
                octet: 0
            })
        );
        assert_eq!(parse_network(""), None);
        assert_eq!(parse_network("chatc x"), None);
    }
}
