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
//!
//! `up` on a cluster of which some nodes run starts the missing ones from
//! their configurations and stores; `restart n2` stops one node (SIGTERM)
//! and starts it again the same way.

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
        /// Network names and ports of its own instead of the operator's
        /// fixed ones (`chatc`, 4222 …): tests, so that they never take
        /// an operator's cluster's names or ports.
        #[arg(long, hide = true)]
        private: bool,
    },
    /// Stop one node (SIGTERM, SIGKILL after a timeout) and start it again
    /// with its configuration and store: `restart n3`.
    Restart {
        /// `n1`, `n2` or `n3`.
        node: String,
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
            private,
        } => up(&dir, loopback, plaintext, private).await,
        ClusterAction::Restart { node } => restart(&dir, &node).await,
        ClusterAction::Down => down(&dir).await,
    }
}

async fn up(dir: &Path, loopback: bool, plaintext: bool, private: bool) -> anyhow::Result<()> {
    let missing: Vec<usize> = (1..=NODES)
        .filter(|i| running_pid(&dir.join(format!("n{i}.pid"))).is_none())
        .collect();
    if missing.is_empty() {
        println!("cluster: already running ({})", read(&dir.join("urls")));
        return Ok(());
    }
    if missing.len() < NODES {
        // Some nodes run: bring the others back as they were (same
        // configuration, same store), whatever the flags say.
        for i in missing {
            start_node(dir, i).await?;
        }
        println!("cluster: every node runs ({})", read(&dir.join("urls")));
        return Ok(());
    }
    // What a crashed run may have left: its namespaces and bridge.
    if !private {
        remove_network(&operator_network());
    }
    std::fs::create_dir_all(dir)?;
    let cluster = NatsCluster::start(ClusterOptions {
        hosts: if loopback {
            HostsChoice::Loopback
        } else {
            HostsChoice::Auto
        },
        run_dir: Some(dir.to_path_buf()),
        fixed: !private,
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

/// `restart nX`: stops node X if it runs, then starts it again.
async fn restart(dir: &Path, node: &str) -> anyhow::Result<()> {
    let i = parse_node(node)?;
    let file = dir.join(format!("n{i}.pid"));
    if let Some(pid) = running_pid(&file) {
        println!("cluster: stopping n{i} (pid {pid})");
        stop(pid).await;
    }
    start_node(dir, i).await?;
    Ok(())
}

/// `n2` (or `2`) → 2.
fn parse_node(node: &str) -> anyhow::Result<usize> {
    let number = node.trim().trim_start_matches('n');
    match number.parse::<usize>() {
        Ok(i) if (1..=NODES).contains(&i) => Ok(i),
        _ => bail!("cluster: no node {node:?} (n1, n2 or n3)"),
    }
}

/// Starts node `i` of the cluster in `dir` as `up` left it: its
/// configuration (ports, routes, credentials), its store, its namespace
/// when the nodes are hosts of their own; waits until it is healthy.
async fn start_node(dir: &Path, i: usize) -> anyhow::Result<()> {
    let name = format!("n{i}");
    let conf = dir.join(format!("{name}.conf"));
    let monitor = read(&dir.join(format!("{name}.monitor-url")));
    if !conf.is_file() || monitor.is_empty() {
        bail!(
            "cluster: {name} was never started here (no {} or {name}.monitor-url); `just cluster up` starts a new cluster",
            conf.display()
        );
    }
    let binary = stack::nats::nats_server_binary()?;
    let network = std::fs::read_to_string(dir.join("network"))
        .ok()
        .as_deref()
        .and_then(parse_network);
    let mut command = match &network {
        Some(names) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", &names.namespace(&name)])
                .arg(&binary);
            c
        }
        None => std::process::Command::new(&binary),
    };
    std::fs::create_dir_all(dir.join("logs"))?;
    let log_path = dir.join("logs").join(format!("{name}.log"));
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    // Left running when this tool exits, as `up` leaves the nodes.
    let child = command
        .arg("-c")
        .arg(&conf)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(log.try_clone()?))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .with_context(|| format!("cluster: starting {name}"))?;
    let pid = child.id();
    write(dir, &format!("{name}.pid"), &pid.to_string())?;
    if let Err(e) = stack::cluster::wait_node_healthy(&monitor, NODE_START_TIMEOUT).await {
        bail!(
            "cluster: {name} (pid {pid}) not healthy within {NODE_START_TIMEOUT:?}: {e:#}; see {}",
            log_path.display()
        );
    }
    println!("cluster: {name} started with its store (pid {pid}, {monitor})");
    Ok(())
}

/// How long a node started again may take to be healthy (it replays its
/// store and catches up with the others).
const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
async fn stop(pid: u32) {
    let _ = stack::send_signal(pid, "TERM");
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    while is_nats_server(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if is_nats_server(pid) {
        println!("cluster: pid {pid} did not stop within {STOP_TIMEOUT:?}; SIGKILL");
        let _ = stack::send_signal(pid, "KILL");
    }
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

/// Whether `pid` is a live nats-server (a killed node whose parent has not
/// reaped it yet is a zombie: not running).
fn is_nats_server(pid: u32) -> bool {
    let live = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) S …`: the state follows the last `)`.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    });
    live && std::fs::read_to_string(format!("/proc/{pid}/comm"))
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

    #[test]
    fn nodes_are_named_n1_to_n3() {
        assert_eq!(parse_node("n3").ok(), Some(3));
        assert_eq!(parse_node("1").ok(), Some(1));
        for bad in ["n0", "n4", "x", ""] {
            assert!(parse_node(bad).is_err(), "{bad}");
        }
    }
}
