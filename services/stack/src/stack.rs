//! The real system as separate processes, for tests and `chatctl`: one
//! nats-server, N `gateway` and M `worker` binaries, and Nginx in front,
//! each on a free loopback port, their output in log files of a temporary
//! run directory. Everything is killed when the [`Stack`] drops.
//!
//! With [`StackOptions::cluster`], NATS is a 3-node cluster
//! ([`crate::cluster`]) with every stream and the bucket R3; when the nodes
//! are hosts of their own (namespaces), so is every gateway and worker,
//! connected to all three nodes by a seed list, and Nginx (on the root
//! namespace's loopback) reaches the gateways on their bridge addresses.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use stack::{Stack, StackOptions};
//! let mut stack = Stack::start(StackOptions {
//!     gateways: 3,
//!     workers: 2,
//!     env: vec![("CHAT_ACK_WAIT_MS".into(), "2000".into())],
//!     ..Default::default()
//! })
//! .await?;
//! let entry = stack.nginx_url(); // http://127.0.0.1:PORT
//! stack.kill_gateway(0)?; // SIGKILL
//! stack.restart_gateway(0).await?; // same port, so Nginx still routes to it
//! # Ok(()) }
//! ```
//!
//! The binaries come from `CHAT_BIN_DIR`, or from the folder of the running
//! executable (`target/debug` for a test): run `cargo build --workspace` first.

use std::path::PathBuf;
use std::process::ExitStatus;

use anyhow::Context;

use crate::cluster::{ClusterOptions, NatsCluster};
use crate::hosts::Host;
use crate::http::wait_healthy;
use crate::nats::{NatsOptions, NatsServer};
use crate::nginx::{Nginx, NginxConfig, NginxLimits};
use crate::process::{READY_TIMEOUT, TERMINATE_TIMEOUT};
use crate::project::{bin_dir, project_dir};
use crate::services::{service, Launcher, Role, Service};

/// What to start. Build it with `..Default::default()`: fields may be added.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub gateways: usize,
    pub workers: usize,
    /// Extra environment for every gateway and worker (e.g.
    /// `CHAT_ACK_WAIT_MS`, `DEMO_TOKENS_PER_SEC`, `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Start Nginx in front of the gateways.
    pub nginx: bool,
    pub nginx_limits: NginxLimits,
    /// A 3-node cluster instead of one nats-server (and `CHAT_REPLICAS=3`).
    pub cluster: Option<ClusterOptions>,
    /// The single nats-server speaks TLS only (a cluster always does,
    /// unless its options say `plaintext`).
    pub tls: bool,
    /// Each JetStream store on a filesystem of its own of this many bytes
    /// (needs root; see [`crate::disk`]), so disk-full faults can fill it.
    pub store_bytes: Option<u64>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            gateways: 3,
            workers: 3,
            env: Vec::new(),
            nginx: true,
            nginx_limits: NginxLimits::default(),
            cluster: None,
            tls: false,
            store_bytes: None,
        }
    }
}

/// The running system. Dropping it kills every process and deletes the run
/// directory (kept, and its path printed, when a test is panicking).
pub struct Stack {
    launcher: Launcher,
    gateways: Vec<Service>,
    workers: Vec<Service>,
    nginx: Option<Nginx>,
    /// Dropped after the services (fields drop in order, after
    /// [`Drop::drop`] killed them): a cluster's namespaces go last.
    nats: Nats,
    run_dir: Option<tempfile::TempDir>,
}

/// One nats-server or a cluster.
enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

/// Host addresses on the cluster's bridge: gateways `.20+i`, workers `.40+i`.
fn host_last_octet(role: Role, index: usize) -> u8 {
    let base = match role {
        Role::Gateway => 20,
        Role::Worker => 40,
    };
    u8::try_from(base + index.min(19)).unwrap_or(base as u8)
}

impl Stack {
    /// Starts nats-server, applies the layout the services' environment
    /// configures (as `chatctl layout apply` does for `just up`), starts the
    /// gateways and workers (in parallel), then
    /// Nginx with the gateways as upstreams, and returns once `/health`
    /// answers 200 through Nginx (or through every gateway without Nginx).
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        let bin_dir = bin_dir()?;
        let run_dir = tempfile::Builder::new().prefix("chat-stack-").tempdir()?;
        let logs = run_dir.path().join("logs");
        std::fs::create_dir_all(&logs)?;
        let mut env = vec![
            ("RUST_LOG".to_string(), "info".to_string()),
            ("NO_COLOR".to_string(), "1".to_string()),
        ];
        let mut nats = match &options.cluster {
            None => Nats::Single(
                NatsServer::start_with(NatsOptions {
                    tls: options.tls,
                    store_bytes: options.store_bytes,
                })
                .context("starting nats-server")?,
            ),
            Some(cluster) => {
                let mut cluster = cluster.clone();
                cluster.run_dir = Some(run_dir.path().join("cluster"));
                cluster.store_bytes = cluster.store_bytes.or(options.store_bytes);
                env.push(("CHAT_REPLICAS".into(), "3".into()));
                Nats::Cluster(
                    NatsCluster::start(cluster)
                        .await
                        .context("starting the NATS cluster")?,
                )
            }
        };
        env.extend(options.env.iter().cloned());
        let ops = nats.security().access(protocol::access::Role::Ops);
        crate::layout::apply_for_services(&nats.url(), &ops, &env).await?;
        let launcher = Launcher {
            bin_dir,
            logs: logs.clone(),
            env,
            security: nats.security().clone(),
            attempts: if options.cluster.is_some() { 3 } else { 1 },
        };
        let url = nats.url();
        let mut hosts = |role: Role, count: usize| -> anyhow::Result<Vec<Option<Host>>> {
            (0..count)
                .map(|i| match &mut nats {
                    Nats::Cluster(c) => c
                        .network_mut()
                        .map(|n| n.add_host(&role.node(i), host_last_octet(role, i)))
                        .transpose(),
                    Nats::Single(_) => Ok(None),
                })
                .collect()
        };
        let gateway_hosts = hosts(Role::Gateway, options.gateways)?;
        let worker_hosts = hosts(Role::Worker, options.workers)?;
        let gateways = futures::future::try_join_all(
            gateway_hosts
                .into_iter()
                .enumerate()
                .map(|(i, host)| launcher.start(Role::Gateway, i, &url, 0, host)),
        );
        let workers = futures::future::try_join_all(
            worker_hosts
                .into_iter()
                .enumerate()
                .map(|(i, host)| launcher.start(Role::Worker, i, &url, 0, host)),
        );
        let (gateways, workers) = futures::future::try_join(gateways, workers).await?;
        let mut stack = Stack {
            launcher,
            gateways,
            workers,
            nginx: None,
            nats,
            run_dir: Some(run_dir),
        };
        for i in 0..stack.gateways.len() {
            wait_healthy(&format!("{}/health", stack.gateway_url(i)), READY_TIMEOUT).await?;
        }
        if options.nginx && !stack.gateways.is_empty() {
            let web_dist = project_dir().join("web/dist");
            let web_root = if web_dist.is_dir() {
                web_dist
            } else {
                let empty = stack.run_dir().join("www");
                std::fs::create_dir_all(&empty)?;
                empty
            };
            let nginx = Nginx::start(NginxConfig {
                port: 0,
                run_dir: stack.run_dir().join("nginx"),
                log_dir: logs,
                web_root,
                upstreams: stack.gateways.iter().map(|g| g.addr).collect(),
                limits: options.nginx_limits,
            })
            .await?;
            wait_healthy(&format!("{}/health", nginx.url()), READY_TIMEOUT).await?;
            stack.nginx = Some(nginx);
        }
        Ok(stack)
    }

    /// The entry point clients use: Nginx's `http://127.0.0.1:PORT`, or
    /// the first gateway's when the stack runs without Nginx.
    pub fn nginx_url(&self) -> String {
        match &self.nginx {
            Some(nginx) => nginx.url(),
            None => self.gateway_url(0),
        }
    }

    /// `http://127.0.0.1:PORT` of gateway `i` (0-based), also after restarts.
    pub fn gateway_url(&self, i: usize) -> String {
        self.gateways
            .get(i)
            .map(|g| format!("http://{}", g.addr))
            .unwrap_or_default()
    }

    /// The `--node` name of gateway `i`: `gw-<i>` (what `ready.node` says).
    pub fn gateway_node(&self, i: usize) -> String {
        Role::Gateway.node(i)
    }

    /// `http://127.0.0.1:PORT` serving worker `i`'s `/metrics` and `/health`.
    pub fn worker_metrics_url(&self, i: usize) -> String {
        self.workers
            .get(i)
            .map(|w| format!("http://{}", w.addr))
            .unwrap_or_default()
    }

    /// The `--node` name of worker `i`: `w-<i>`.
    pub fn worker_node(&self, i: usize) -> String {
        Role::Worker.node(i)
    }

    /// The `NATS_URL` the services use: the server, or the cluster's seed list.
    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// The credentials (and TLS files) of the stack's NATS.
    pub fn nats_security(&self) -> &credentials::NatsSecurity {
        self.nats.security()
    }

    /// A client of the stack's NATS with `role`'s credentials (tools and
    /// tests audit the streams as [`protocol::access::Role::Ops`]).
    pub async fn connect_nats(
        &self,
        role: protocol::access::Role,
    ) -> anyhow::Result<async_nats::Client> {
        let options = self
            .nats_security()
            .access(role)
            .apply(role, async_nats::ConnectOptions::new())?;
        options
            .connect(protocol::connect::seed_list(&self.nats_url()))
            .await
            .with_context(|| format!("connecting to {} as {role}", self.nats_url()))
    }

    /// nats-server's monitoring base URL (`/jsz`, `/varz`); it changes
    /// after [`Stack::restart_nats`]. For a cluster, node 1's.
    pub fn monitor_url(&self) -> String {
        match &self.nats {
            Nats::Single(server) => server.monitor_url(),
            Nats::Cluster(cluster) => cluster.monitor_url(0),
        }
    }

    /// The single nats-server, to pause it or fill its store (`None` for a
    /// cluster).
    pub fn nats_mut(&mut self) -> Option<&mut NatsServer> {
        match &mut self.nats {
            Nats::Single(server) => Some(server),
            Nats::Cluster(_) => None,
        }
    }

    /// The single nats-server (`None` for a cluster).
    pub fn nats(&self) -> Option<&NatsServer> {
        match &self.nats {
            Nats::Single(server) => Some(server),
            Nats::Cluster(_) => None,
        }
    }

    /// The cluster (`None` for a single nats-server).
    pub fn cluster(&self) -> Option<&NatsCluster> {
        match &self.nats {
            Nats::Cluster(cluster) => Some(cluster),
            Nats::Single(_) => None,
        }
    }

    pub fn cluster_mut(&mut self) -> Option<&mut NatsCluster> {
        match &mut self.nats {
            Nats::Cluster(cluster) => Some(cluster),
            Nats::Single(_) => None,
        }
    }

    /// Cuts gateway `i`'s host off from every NATS node (its clients and
    /// Nginx still reach it) until [`Stack::heal_gateway`]. Needs a cluster
    /// on namespaces.
    pub fn cut_gateway_from_nats(&mut self, i: usize) -> anyhow::Result<()> {
        self.cut_gateway_from_nodes(i, &(0..crate::cluster::NODES).collect::<Vec<_>>())
    }

    /// Cuts gateway `i`'s host off from the NATS nodes `nodes` only, so it
    /// connects to the others, until [`Stack::heal_gateway`]. Needs a
    /// cluster on namespaces.
    pub fn cut_gateway_from_nodes(&mut self, i: usize, nodes: &[usize]) -> anyhow::Result<()> {
        let host = self.gateway_host(i)?;
        let cluster = self
            .cluster()
            .ok_or_else(|| anyhow::anyhow!("cutting a gateway off needs a cluster"))?;
        let network = cluster
            .network()
            .ok_or_else(|| anyhow::anyhow!("cutting a gateway off needs namespaces"))?;
        let addrs = cluster.node_addrs();
        let cut: Vec<_> = nodes
            .iter()
            .filter_map(|&n| addrs.get(n).copied())
            .collect();
        network.cut_off(&host, &cut)
    }

    /// Makes gateway `i`'s links to every NATS node drop `percent` % of
    /// their packets (its clients' links stay whole) until
    /// [`Stack::heal_lossy_gateway`]. Needs a cluster on namespaces.
    pub fn lossy_gateway(&mut self, i: usize, percent: u8) -> anyhow::Result<()> {
        let host = self.gateway_host(i)?;
        let cluster = self
            .cluster()
            .ok_or_else(|| anyhow::anyhow!("a gateway's lossy link needs a cluster"))?;
        let network = cluster
            .network()
            .ok_or_else(|| anyhow::anyhow!("a gateway's lossy link needs namespaces"))?;
        network.lossy(&host, &cluster.node_addrs(), percent)
    }

    /// Ends [`Stack::lossy_gateway`].
    pub fn heal_lossy_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let host = self.gateway_host(i)?;
        let network = self
            .cluster()
            .and_then(NatsCluster::network)
            .ok_or_else(|| anyhow::anyhow!("a gateway's lossy link needs namespaces"))?;
        network.heal_lossy(&host)
    }

    /// SIGSTOP gateway `i` (its sockets see nothing) until
    /// [`Stack::resume_gateway`].
    pub fn pause_gateway(&self, i: usize) -> anyhow::Result<()> {
        signal(self.gateway_pid(i), "STOP", Role::Gateway, i)
    }

    /// SIGCONT gateway `i`.
    pub fn resume_gateway(&self, i: usize) -> anyhow::Result<()> {
        signal(self.gateway_pid(i), "CONT", Role::Gateway, i)
    }

    /// SIGSTOP worker `i` (its jobs' leases run out) until
    /// [`Stack::resume_worker`].
    pub fn pause_worker(&self, i: usize) -> anyhow::Result<()> {
        signal(self.worker_pid(i), "STOP", Role::Worker, i)
    }

    /// SIGCONT worker `i`.
    pub fn resume_worker(&self, i: usize) -> anyhow::Result<()> {
        signal(self.worker_pid(i), "CONT", Role::Worker, i)
    }

    /// Ends [`Stack::cut_gateway_from_nats`].
    pub fn heal_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let host = self.gateway_host(i)?;
        let network = self
            .cluster()
            .and_then(NatsCluster::network)
            .ok_or_else(|| anyhow::anyhow!("healing a gateway needs a cluster on namespaces"))?;
        network.heal(&host)
    }

    fn gateway_host(&mut self, i: usize) -> anyhow::Result<Host> {
        service(&mut self.gateways, Role::Gateway, i)?
            .host
            .clone()
            .ok_or_else(|| anyhow::anyhow!("gateway {i} has no host of its own (loopback)"))
    }

    pub fn gateway_count(&self) -> usize {
        self.gateways.len()
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The temporary folder with `logs/<node>.log`, `logs/nginx-*.log`.
    pub fn run_dir(&self) -> PathBuf {
        self.run_dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default()
    }

    /// The log file of gateway `gw-<i>` or worker `w-<i>` (by node name).
    pub fn log_path(&self, node: &str) -> PathBuf {
        self.launcher.logs.join(format!("{node}.log"))
    }

    /// Whether gateway `i`'s process is running.
    pub fn gateway_running(&mut self, i: usize) -> bool {
        self.gateways
            .get_mut(i)
            .is_some_and(|g| g.process.is_running())
    }

    /// Whether worker `i`'s process is running.
    pub fn worker_running(&mut self, i: usize) -> bool {
        self.workers
            .get_mut(i)
            .is_some_and(|w| w.process.is_running())
    }

    /// The single nats-server's process id (`None` for a cluster).
    pub fn nats_pid(&self) -> Option<u32> {
        self.nats().and_then(NatsServer::pid)
    }

    /// Nginx's master process id.
    pub fn nginx_pid(&self) -> Option<u32> {
        self.nginx.as_ref().and_then(Nginx::pid)
    }

    pub fn gateway_pid(&self, i: usize) -> Option<u32> {
        self.gateways.get(i).and_then(|g| g.process.pid())
    }

    pub fn worker_pid(&self, i: usize) -> Option<u32> {
        self.workers.get(i).and_then(|w| w.process.pid())
    }

    /// SIGKILL gateway `i`: its WebSockets drop without a close frame.
    pub fn kill_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        service(&mut self.gateways, Role::Gateway, i)?
            .process
            .kill();
        Ok(())
    }

    /// SIGTERM gateway `i` and wait for it to exit (graceful: 1012 closes).
    pub async fn terminate_gateway(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        let g = service(&mut self.gateways, Role::Gateway, i)?;
        g.process
            .terminate(TERMINATE_TIMEOUT)
            .await
            .with_context(|| format!("terminating {}", Role::Gateway.node(i)))
    }

    /// Starts gateway `i` again on its old port (killing it first if it
    /// still runs), so Nginx's upstream list stays right.
    pub async fn restart_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        self.restart(Role::Gateway, i).await
    }

    /// SIGKILL worker `i`: its jobs come back after `ack_wait`.
    pub fn kill_worker(&mut self, i: usize) -> anyhow::Result<()> {
        service(&mut self.workers, Role::Worker, i)?.process.kill();
        Ok(())
    }

    /// SIGTERM worker `i` and wait for it to exit.
    pub async fn terminate_worker(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        let w = service(&mut self.workers, Role::Worker, i)?;
        w.process
            .terminate(TERMINATE_TIMEOUT)
            .await
            .with_context(|| format!("terminating {}", Role::Worker.node(i)))
    }

    /// Starts worker `i` again (same metrics port), killing it first if it
    /// still runs.
    pub async fn restart_worker(&mut self, i: usize) -> anyhow::Result<()> {
        self.restart(Role::Worker, i).await
    }

    /// Kills nats-server and starts it again on the same port with the same
    /// store, as an operator's restart would. Blocks while it starts.
    pub fn restart_nats(&mut self) -> anyhow::Result<()> {
        match &mut self.nats {
            Nats::Single(server) => server.restart(),
            Nats::Cluster(_) => anyhow::bail!("restart a cluster's nodes one by one"),
        }
    }

    /// SIGKILL nats-server (every node of a cluster), keeping its store
    /// ([`Stack::restart_nats`] brings a single server back).
    pub fn kill_nats(&mut self) {
        match &mut self.nats {
            Nats::Single(server) => server.kill(),
            Nats::Cluster(cluster) => {
                for i in 0..crate::cluster::NODES {
                    let _ = cluster.kill(i);
                }
            }
        }
    }

    async fn restart(&mut self, role: Role, i: usize) -> anyhow::Result<()> {
        let list = match role {
            Role::Gateway => &mut self.gateways,
            Role::Worker => &mut self.workers,
        };
        let old = service(list, role, i)?;
        old.process.kill();
        let port = old.addr.port();
        let host = old.host.clone();
        let fresh = self
            .launcher
            .start(role, i, &self.nats.url(), port, host)
            .await?;
        if let Some(slot) = list.get_mut(i) {
            *slot = fresh;
        }
        if role == Role::Gateway {
            wait_healthy(&format!("{}/health", self.gateway_url(i)), READY_TIMEOUT).await?;
        }
        Ok(())
    }
}

/// Sends `sig` to a service's process.
fn signal(pid: Option<u32>, sig: &str, role: Role, i: usize) -> anyhow::Result<()> {
    let pid = pid.ok_or_else(|| anyhow::anyhow!("{} is not running", role.node(i)))?;
    crate::process::send_signal(pid, sig)
}

impl Nats {
    fn security(&self) -> &credentials::NatsSecurity {
        match self {
            Nats::Single(server) => server.security(),
            Nats::Cluster(cluster) => cluster.security(),
        }
    }

    fn url(&self) -> String {
        match self {
            Nats::Single(server) => server.url(),
            Nats::Cluster(cluster) => cluster.client_urls(),
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut nginx) = self.nginx.take() {
            nginx.stop();
        }
        for s in self.gateways.iter_mut().chain(self.workers.iter_mut()) {
            s.process.kill();
        }
        if std::thread::panicking() {
            if let Some(dir) = self.run_dir.take() {
                eprintln!("stack: logs kept in {}", dir.keep().display());
            }
        }
    }
}
