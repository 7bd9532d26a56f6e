//! The peer's processes: a temporary Redis and the Node service of
//! `bench/peers/resumable-stream`, each on a free loopback port with its
//! files in one temporary folder, stopped (and the folder removed) when the
//! [`PeerService`] drops, also when a run fails half way.
//!
//! Redis runs with no persistence by default (`--save "" --appendonly no`):
//! the library keeps a stream's chunks in the producing Node process, and
//! Redis carries only a sentinel key per stream, the pub/sub of resumes and
//! each finished answer; `appendonly` turns on the append-only file with
//! one fsync a second, Redis's own default for durability.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::sync::oneshot;

/// How long Redis or the Node service may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How the peer runs.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// Node processes behind the one port (node:cluster).
    pub processes: usize,
    /// Redis writes an append-only file, fsynced every second.
    pub appendonly: bool,
}

impl PeerOptions {
    /// The configuration, as the report states it.
    pub fn describe(&self) -> String {
        format!(
            "resumable-stream {} + redis (npm) {} on Node.js {}, {} Node process(es) (node:cluster), Redis {} {}",
            package_version("resumable-stream").unwrap_or_else(|| "?".into()),
            package_version("redis").unwrap_or_else(|| "?".into()),
            command_version("node", &["--version"]).unwrap_or_else(|| "?".into()),
            self.processes,
            command_version("redis-server", &["--version"])
                .and_then(|v| {
                    v.split_whitespace()
                        .find_map(|w| w.strip_prefix("v=").map(str::to_string))
                })
                .unwrap_or_else(|| "?".into()),
            if self.appendonly {
                "appendonly yes, appendfsync everysec"
            } else {
                "without persistence (save \"\", appendonly no)"
            }
        )
    }
}

/// Where the peer's Node service lives in the project.
pub fn peer_dir() -> PathBuf {
    stack::project::project_dir().join("bench/peers/resumable-stream")
}

/// Redis and the Node service, running.
pub struct PeerService {
    node: Option<Child>,
    redis: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl PeerService {
    /// Installs the Node service's packages if they are missing (`npm ci`),
    /// starts Redis, then the service; fails with what to install when
    /// `redis-server`, `node` or `npm` is not there.
    pub async fn start(options: &PeerOptions) -> anyhow::Result<Self> {
        let redis_bin = find_program("redis-server").context(
            "redis-server is not installed: run `scripts/install-deps.sh --bench` (apt-get install redis-server)",
        )?;
        let node_bin = find_program("node")
            .context("node is not installed: run `scripts/install-deps.sh --bench`")?;
        ensure_packages().await?;
        let dir = tempfile::Builder::new()
            .prefix("chat-bench-peer-")
            .tempdir()?;
        let (redis, redis_port) = start_redis(&redis_bin, dir.path(), options).await?;
        let mut service = Self {
            node: None,
            redis: Some(redis),
            port: 0,
            dir,
        };
        let log = service.dir.path().join("node.log");
        let mut command = Command::new(&node_bin);
        command
            .arg("server.mjs")
            .current_dir(peer_dir())
            .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
            .env("PEER_PROCESSES", options.processes.max(1).to_string())
            .env("PORT", "0");
        let (node, line) = spawn_until(command, log, "peer listening on").await?;
        service.node = Some(node);
        service.port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| anyhow!("no port in the peer's ready line {line:?}"))?;
        Ok(service)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every process of the peer by name (`node` for the Node processes,
    /// the cluster's workers included, `redis-server`), for CPU and memory.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut pids = Vec::new();
        if let Some(node) = &self.node {
            pids.push(("node".to_string(), node.id()));
            pids.extend(
                children_of(node.id())
                    .into_iter()
                    .map(|p| ("node".into(), p)),
            );
        }
        if let Some(redis) = &self.redis {
            pids.push(("redis-server".into(), redis.id()));
        }
        pids
    }

    /// The peer's logs, for an error message.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in ["node.log", "redis.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(15);
            out.push_str(&format!("--- {name}\n{}\n", lines[from..].join("\n")));
        }
        out
    }
}

impl Drop for PeerService {
    fn drop(&mut self) {
        if let Some(mut node) = self.node.take() {
            // The cluster's workers first: killing the primary alone with
            // SIGKILL would leave them running.
            for pid in children_of(node.id()) {
                let _ = stack::send_signal(pid, "KILL");
            }
            let _ = node.kill();
            let _ = node.wait();
        }
        if let Some(mut redis) = self.redis.take() {
            let _ = redis.kill();
            let _ = redis.wait();
        }
    }
}

async fn start_redis(
    bin: &Path,
    dir: &Path,
    options: &PeerOptions,
) -> anyhow::Result<(Child, u16)> {
    // A port free a moment ago may be taken before Redis binds it: then it
    // exits at once, and a fresh port is tried.
    let mut last_error = None;
    for _ in 0..3 {
        let port = stack::ports::free_port()?;
        let mut command = Command::new(bin);
        command.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]);
        command.args(["--dir", &dir.display().to_string(), "--save", ""]);
        if options.appendonly {
            command.args(["--appendonly", "yes", "--appendfsync", "everysec"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        command.args(["--daemonize", "no", "--maxclients", "100000"]);
        match spawn_until(
            command,
            dir.join("redis.log"),
            "Ready to accept connections",
        )
        .await
        {
            Ok((child, _)) => return Ok((child, port)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow!("redis-server did not start")))
}

/// Starts `command` with stdout and stderr in `log` and returns once a
/// stdout line contains `marker`, with that line; kills it otherwise.
async fn spawn_until(
    mut command: Command,
    log: PathBuf,
    marker: &'static str,
) -> anyhow::Result<(Child, String)> {
    let stderr = File::options().create(true).append(true).open(&log)?;
    let mut stdout_log = File::options().create(true).append(true).open(&log)?;
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout of {what}"))?;
    let (ready_tx, ready_rx) = oneshot::channel();
    // A thread keeps draining the pipe so the child never blocks on it.
    std::thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(stdout_log, "{line}");
            if line.contains(marker) {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(line);
                }
            }
        }
    });
    let failed = match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
        Ok(Ok(line)) => return Ok((child, line)),
        Ok(Err(_)) => "exited before it was ready",
        Err(_) => "was not ready in time",
    };
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    bail!("{what} {failed}; its log {}:\n{text}", log.display())
}

/// `npm ci` in the peer's folder when its packages are not installed yet
/// (a fresh checkout; `just bench` runs it first anyway).
async fn ensure_packages() -> anyhow::Result<()> {
    let dir = peer_dir();
    if dir
        .join("node_modules/resumable-stream/package.json")
        .is_file()
    {
        return Ok(());
    }
    let npm = find_program("npm")
        .context("npm is not installed: run `scripts/install-deps.sh --bench`")?;
    let output = tokio::process::Command::new(npm)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running npm ci")?;
    if !output.status.success() {
        bail!(
            "npm ci in {} failed ({}):\n{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A program on `PATH`.
fn find_program(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{name} is not on PATH"))
}

/// Pids whose parent is `parent` (the cluster's Node workers).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // Field 4, the parent pid, counted after the `)` that ends the name.
                stat.rfind(')')
                    .and_then(|i| stat.get(i + 1..))
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// The installed version of an npm package of the peer.
fn package_version(name: &str) -> Option<String> {
    let path = peer_dir()
        .join("node_modules")
        .join(name)
        .join("package.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("version")?.as_str().map(str::to_string)
}

fn command_version(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
