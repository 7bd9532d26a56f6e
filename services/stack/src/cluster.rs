//! A 3-node NATS JetStream cluster (for R3 streams), each node a host of
//! its own ([`crate::hosts`]: a network namespace with its own address,
//! standard ports 4222/6222/8222) when the machine allows it, otherwise
//! three servers on loopback with distinct ports, saying so. Nodes can be
//! killed, restarted, restarted in lame-duck mode, and cut off from
//! everyone (a partition) and healed. The cluster answers who leads each
//! stream and whether every replica holds the same messages.
//!
//! Each node's config is rendered from `nats/cluster/node.conf.template`,
//! the file an operator fills in for real machines.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use credentials::NatsSecurity;

use crate::disk::SmallDisk;
use crate::hosts::{namespaces_available, Host, HostNetwork, NetworkNames};
use crate::http::{http_get, wait_healthy};
use crate::nats::{harness_access, harness_permissions, nats_server_binary, HARNESS_USER};
use crate::ports::free_port;
use crate::process::{log_tail, send_signal};
use crate::project::project_dir;

mod links;
mod replicas;
use replicas::{converged, node_streams};
pub use replicas::{parse_jsz_streams, ReplicaState};

/// Nodes in the cluster.
pub const NODES: usize = 3;
/// How long a (re)started node may take to be healthy (JetStream current
/// with the meta leader).
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// A lame-duck node closes its clients over `lame_duck_duration` (30 s in
/// the template) and exits; this bounds the wait.
const LAME_DUCK_EXIT_TIMEOUT: Duration = Duration::from_secs(45);

/// Where the nodes run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostsChoice {
    /// Namespaces when the machine allows them, loopback otherwise.
    #[default]
    Auto,
    Loopback,
}

/// What to start. Build it with `..Default::default()`.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    pub hosts: HostsChoice,
    /// Stores, configs and logs go here (a temporary folder when `None`).
    pub run_dir: Option<PathBuf>,
    /// Fixed names and ports for an operator's cluster (`chatctl cluster
    /// up`): network `chatc` on 10.77.0.0/24, or loopback ports
    /// 4222-4224 / 6222-6224 / 8222-8224. Otherwise unique per run.
    pub fixed: bool,
    /// JetStream `sync_interval` (`always`, `10s` …); `None`: the
    /// server's default.
    pub sync_interval: Option<String>,
    /// Clients and routes speak TLS unless this is set.
    pub plaintext: bool,
    /// Where the credentials are (generated when missing); `None`: the
    /// run directory's `credentials/`.
    pub credentials_dir: Option<PathBuf>,
    /// Put each node's store on a filesystem of its own of this many bytes
    /// ([`SmallDisk`], needs root), so it can be filled.
    pub store_bytes: Option<u64>,
}

/// One node: its place on the network, its config and its process.
struct Node {
    /// `n1` … `n3`.
    name: String,
    /// `chat-n1` …: the name the server reports as a stream's leader.
    server_name: String,
    host: Option<Host>,
    ip: Ipv4Addr,
    client_port: u16,
    monitor_port: u16,
    route_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The store's own filesystem ([`ClusterOptions::store_bytes`]).
    disk: Option<SmallDisk>,
}

impl Node {
    fn monitor_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.monitor_port)
    }

    fn client_url(&self) -> String {
        format!("nats://{}:{}", self.ip, self.client_port)
    }

    fn spawn(&mut self, binary: &Path) -> anyhow::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let mut command = match &self.host {
            Some(host) => host.command(binary),
            None => Command::new(binary),
        };
        let child = command
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/healthz", self.monitor_url());
        let deadline = tokio::time::Instant::now() + NODE_READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    bail!(
                        "{} exited ({status}); its log {}:\n{}",
                        self.name,
                        self.log.display(),
                        log_tail(&self.log)
                    );
                }
            }
            if matches!(http_get(&url).await, Ok((200, _))) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} was not healthy within {NODE_READY_TIMEOUT:?}; its log {}:\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A running 3-node cluster. Dropping it kills the nodes, then removes
/// its hosts and (when temporary) its folder.
pub struct NatsCluster {
    nodes: Vec<Node>,
    binary: PathBuf,
    /// Declared after `nodes`, dropped after them: a namespace is removed
    /// once no process runs in it.
    network: Option<HostNetwork>,
    run_dir: PathBuf,
    temp_dir: Option<tempfile::TempDir>,
    /// Why the nodes run on loopback, when they do.
    loopback_reason: Option<String>,
    security: NatsSecurity,
}

impl NatsCluster {
    /// Starts three nodes and returns once each is healthy.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        let binary = nats_server_binary()?;
        let (run_dir, temp_dir) = match &options.run_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let dir = tempfile::Builder::new().prefix("chat-cluster-").tempdir()?;
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        std::fs::create_dir_all(run_dir.join("logs"))?;
        let (network, loopback_reason) = match options.hosts {
            HostsChoice::Loopback => (None, Some("loopback was asked for".to_string())),
            HostsChoice::Auto if !namespaces_available() => (
                None,
                Some("network namespaces need root and `ip netns`".to_string()),
            ),
            HostsChoice::Auto => {
                let made = if options.fixed {
                    HostNetwork::create_named(operator_network())
                } else {
                    HostNetwork::create()
                };
                match made {
                    Ok(network) => (Some(network), None),
                    Err(e) => (None, Some(format!("could not make namespaces: {e:#}"))),
                }
            }
        };
        if let Some(reason) = &loopback_reason {
            eprintln!("cluster: nodes on loopback with distinct ports ({reason})");
        }
        let mut network = network;
        let (nodes, security) = Self::place_nodes(network.as_mut(), &run_dir, &options)?;
        let mut cluster = Self {
            nodes,
            binary,
            network,
            run_dir,
            temp_dir,
            loopback_reason,
            security,
        };
        for node in &mut cluster.nodes {
            node.spawn(&cluster.binary)?;
        }
        for node in &mut cluster.nodes {
            node.wait_ready().await?;
        }
        Ok(cluster)
    }

    /// Gives each node an address and ports, makes (or reuses) the
    /// credentials, and writes each node's config.
    fn place_nodes(
        mut network: Option<&mut HostNetwork>,
        run_dir: &Path,
        options: &ClusterOptions,
    ) -> anyhow::Result<(Vec<Node>, NatsSecurity)> {
        let template_path = project_dir().join("nats/cluster/node.conf.template");
        let template = std::fs::read_to_string(&template_path)
            .with_context(|| format!("reading {}", template_path.display()))?;
        let mut places = Vec::new();
        for i in 0..NODES {
            let name = format!("n{}", i + 1);
            let offset = u16::try_from(i).unwrap_or(0);
            let (host, ip, ports) = match network.as_deref_mut() {
                Some(network) => {
                    let last = 11 + u8::try_from(i).unwrap_or(0);
                    let host = network.add_host(&name, last)?;
                    let ip = host.addr;
                    (Some(host), ip, [4222, 6222, 8222])
                }
                None if options.fixed => (
                    None,
                    Ipv4Addr::LOCALHOST,
                    [4222 + offset, 6222 + offset, 8222 + offset],
                ),
                None => (
                    None,
                    Ipv4Addr::LOCALHOST,
                    [free_port()?, free_port()?, free_port()?],
                ),
            };
            places.push((name, host, ip, ports));
        }
        let names: Vec<String> = places.iter().map(|(_, _, ip, _)| ip.to_string()).collect();
        let credentials_dir = options
            .credentials_dir
            .clone()
            .unwrap_or_else(|| run_dir.join("credentials"));
        let security = NatsSecurity::ensure(&credentials_dir, !options.plaintext, &names)?;
        let routes = places
            .iter()
            .map(|(_, _, ip, [_, route, _])| {
                security
                    .credentials
                    .route_url(&format!("{ip}:{route}"))
                    .map(|url| format!("    {url}"))
            })
            .collect::<Result<Vec<_>, _>>()?
            .join("\n");
        // A test's cluster has the harness identity too; an operator's
        // (`fixed`) has only the roles.
        let server_security = if options.fixed {
            security.server_conf()?
        } else {
            security.credentials.ensure_seed(HARNESS_USER)?;
            security.server_conf_with(&[(HARNESS_USER, harness_permissions())])?
        };
        let route_security = security.route_conf()?;
        let sync = options
            .sync_interval
            .as_deref()
            .map(|s| format!("  sync_interval: {s}"))
            .unwrap_or_default();
        let mut nodes = Vec::new();
        for (name, host, ip, [client, route, monitor]) in places {
            // Mounted before the node starts, so a node in a namespace of
            // its own sees the mount too.
            let disk = match options.store_bytes {
                Some(bytes) => Some(SmallDisk::mount(
                    &run_dir.join(format!("{name}-disk")),
                    bytes,
                )?),
                None => None,
            };
            let store = match &disk {
                Some(disk) => disk.store_dir().to_path_buf(),
                None => run_dir.join(&name),
            };
            std::fs::create_dir_all(&store)?;
            let server_name = format!("chat-{name}");
            let text = template
                .replace("@@SERVER_NAME@@", &server_name)
                .replace("@@CLIENT_LISTEN@@", &format!("{ip}:{client}"))
                .replace("@@MONITOR_LISTEN@@", &format!("{ip}:{monitor}"))
                .replace("@@ROUTE_LISTEN@@", &format!("{ip}:{route}"))
                .replace("@@STORE_DIR@@", &store.display().to_string())
                .replace("@@SYNC_INTERVAL@@", &sync)
                .replace("@@ROUTES@@", &routes)
                .replace("@@SECURITY@@", &server_security)
                .replace("@@ROUTE_SECURITY@@", &route_security);
            if let Some(at) = text.find("@@") {
                bail!("the node template has a placeholder left at byte {at}");
            }
            let conf = run_dir.join(format!("{name}.conf"));
            // Holds the routes' password: its owner's only.
            write_owner_only(&conf, &text)?;
            nodes.push(Node {
                log: run_dir.join("logs").join(format!("{name}.log")),
                name,
                server_name,
                host,
                ip,
                client_port: client,
                monitor_port: monitor,
                route_port: route,
                conf,
                child: None,
                disk,
            });
        }
        Ok((nodes, security))
    }

    /// A client of every node (the seed list) with every right: a test's
    /// own set-up and checks (only on a cluster that is not `fixed`).
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        // The services' options: a ping a second, so a client whose node is
        // cut off moves to another within seconds (with the default 60 s
        // ping, a test's publishes into a partitioned node went unacked
        // for 90 s).
        let (options, _) = protocol::connect::options("harness");
        harness_access(&self.security)
            .apply(protocol::access::Role::Ops, options)?
            .connect(protocol::connect::seed_list(&self.client_urls()))
            .await
            .with_context(|| format!("connecting to {}", self.client_urls()))
    }

    /// The credentials (and TLS files) of the cluster's clients.
    pub fn security(&self) -> &NatsSecurity {
        &self.security
    }

    /// Whether the nodes are hosts of their own (namespaces).
    pub fn namespaced(&self) -> bool {
        self.network.is_some()
    }

    /// Why the nodes run on loopback, if they do.
    pub fn loopback_reason(&self) -> Option<&str> {
        self.loopback_reason.as_deref()
    }

    /// The seed list for `NATS_URL`: every node, comma-separated.
    pub fn client_urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::client_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client_url(&self, i: usize) -> String {
        self.nodes.get(i).map(Node::client_url).unwrap_or_default()
    }

    /// Node `i`'s route address (`IP:PORT`), where the other nodes connect.
    pub fn route_addr(&self, i: usize) -> String {
        self.nodes
            .get(i)
            .map(|n| format!("{}:{}", n.ip, n.route_port))
            .unwrap_or_default()
    }

    pub fn monitor_url(&self, i: usize) -> String {
        self.nodes.get(i).map(Node::monitor_url).unwrap_or_default()
    }

    /// `n1` … `n3`.
    pub fn node_name(&self, i: usize) -> String {
        self.nodes
            .get(i)
            .map(|n| n.name.clone())
            .unwrap_or_default()
    }

    pub fn node_pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i)?.child.as_ref().map(Child::id)
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The network the nodes are hosts on; services can join it.
    pub fn network_mut(&mut self) -> Option<&mut HostNetwork> {
        self.network.as_mut()
    }

    pub fn network(&self) -> Option<&HostNetwork> {
        self.network.as_ref()
    }

    /// The nodes' addresses (to cut a host off from NATS).
    pub fn node_addrs(&self) -> Vec<Ipv4Addr> {
        self.nodes.iter().map(|n| n.ip).collect()
    }

    fn node(&mut self, i: usize) -> anyhow::Result<&mut Node> {
        self.nodes
            .get_mut(i)
            .ok_or_else(|| anyhow!("there is no node {i} (the cluster has {NODES})"))
    }

    /// SIGKILL node `i`, keeping its store.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.node(i)?.kill();
        Ok(())
    }

    /// Starts node `i` again (killing it first if it runs) and waits until
    /// it is healthy.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let binary = self.binary.clone();
        let node = self.node(i)?;
        node.kill();
        node.spawn(&binary)?;
        node.wait_ready().await
    }

    /// Lame-duck restart of node `i`: SIGUSR2, wait for it to exit (it
    /// hands over its leaderships and closes its clients), start it again
    /// and wait until it is healthy.
    pub async fn lame_duck_restart(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.node(i)?;
        let Some(mut child) = node.child.take() else {
            bail!("{} is not running", node.name);
        };
        send_signal(child.id(), "USR2")?;
        let deadline = tokio::time::Instant::now() + LAME_DUCK_EXIT_TIMEOUT;
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within {LAME_DUCK_EXIT_TIMEOUT:?} of lame-duck mode",
                    node.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.restart(i).await
    }

    /// SIGSTOP node `i`: its sockets stay open and nothing is answered
    /// until [`NatsCluster::resume`].
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self
            .node_pid(i)
            .ok_or_else(|| anyhow!("node {i} is not running"))?;
        send_signal(pid, "STOP")
    }

    /// SIGCONT node `i`.
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self
            .node_pid(i)
            .ok_or_else(|| anyhow!("node {i} is not running"))?;
        send_signal(pid, "CONT")
    }

    /// Fills node `i`'s store's filesystem with a ballast; returns its size.
    pub fn fill_store(&mut self, i: usize) -> anyhow::Result<u64> {
        self.disk(i)?.fill()
    }

    /// Removes node `i`'s ballast.
    pub fn free_store(&mut self, i: usize) -> anyhow::Result<()> {
        self.disk(i)?.free()
    }

    fn disk(&mut self, i: usize) -> anyhow::Result<&SmallDisk> {
        let node = self.node(i)?;
        let name = node.name.clone();
        node.disk
            .as_ref()
            .ok_or_else(|| anyhow!("{name}'s store has no filesystem of its own (store_bytes)"))
    }

    /// Node `i`'s `/healthz`: `Ok(())` when it answers 200, otherwise what
    /// it said (a stream's write error, JetStream disabled).
    pub async fn health(&self, i: usize) -> Result<(), String> {
        let url = format!("{}/healthz", self.monitor_url(i));
        match http_get(&url).await {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(format!("{status}: {}", body.trim())),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// Node `i`'s client and route ports (for lossy links on loopback).
    pub fn node_ports(&self, i: usize) -> Vec<u16> {
        self.nodes
            .get(i)
            .map(|n| vec![n.client_port, n.route_port])
            .unwrap_or_default()
    }

    /// Each node's view of every stream, from its own monitoring endpoint
    /// (`/jsz?accounts=true&streams=true`). A node that does not answer is
    /// an error.
    pub async fn replica_states(&self) -> anyhow::Result<Vec<BTreeMap<String, ReplicaState>>> {
        let mut all = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            all.push(node_streams(&node.monitor_url()).await?);
        }
        Ok(all)
    }

    /// Which node (index) leads `stream` (e.g. `CHAT_EVENTS`,
    /// `KV_chat_sessions`), as the first node that answers reports it.
    pub async fn leader_of(&self, stream: &str) -> anyhow::Result<usize> {
        let mut last = anyhow!("no node answered");
        for node in &self.nodes {
            match node_streams(&node.monitor_url()).await {
                Ok(streams) => {
                    let leader = streams.get(stream).and_then(|s| s.leader.clone());
                    if let Some(i) = leader
                        .as_deref()
                        .and_then(|l| self.nodes.iter().position(|n| n.server_name == l))
                    {
                        return Ok(i);
                    }
                    last = anyhow!("{} knows no leader of {stream}", node.name);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Waits until every node reports the same message count and last
    /// sequence for every stream; returns the per-node states either way
    /// and whether they converged within `timeout`.
    pub async fn wait_converged(
        &self,
        timeout: Duration,
    ) -> (
        bool,
        Vec<(String, anyhow::Result<BTreeMap<String, ReplicaState>>)>,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut views = Vec::new();
            for node in &self.nodes {
                views.push((node.name.clone(), node_streams(&node.monitor_url()).await));
            }
            let converged = converged(&views);
            if converged || tokio::time::Instant::now() >= deadline {
                return (converged, views);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Leaves the nodes running and the hosts in place (`chatctl cluster
    /// up`): returns each node's pid, and the network's names if any.
    pub fn detach(mut self) -> (Vec<(String, u32)>, Option<NetworkNames>) {
        let pids = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.take().map(|c| (n.name.clone(), c.id())))
            .collect();
        let names = self.network.take().map(HostNetwork::detach);
        if let Some(dir) = self.temp_dir.take() {
            let _ = dir.keep();
        }
        (pids, names)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        if std::thread::panicking() {
            if let Some(dir) = self.temp_dir.take() {
                eprintln!("cluster: logs kept in {}", dir.keep().display());
            }
        }
    }
}

/// The fixed network of `chatctl cluster up`: `chatc-n1` … on 10.77.0.0/24.
pub fn operator_network() -> NetworkNames {
    NetworkNames {
        prefix: "chatc".to_string(),
        octet: 0,
    }
}

/// Writes `text` to `path` with mode 0600.
fn write_owner_only(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Waits until `url` answers 200 (re-exported for callers of detached clusters).
pub async fn wait_node_healthy(monitor_url: &str, timeout: Duration) -> anyhow::Result<()> {
    wait_healthy(&format!("{monitor_url}/healthz"), timeout).await
}
