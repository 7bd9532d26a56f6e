//! One child process of the stack and its lifecycle: started with its
//! output in a log file, waited for until it prints its ready line,
//! stopped with SIGTERM (graceful) or SIGKILL, and killed when dropped so a
//! failing test never leaves a server behind.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::sync::oneshot;

/// How long a process may take to print its ready line.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd process may take to exit before it is killed.
pub(crate) const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `signal` (`TERM`, `KILL`, …) to `pid` with the `kill` command: the
/// workspace forbids `unsafe`, so no `libc::kill`.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed ({status})");
    }
    Ok(())
}

/// The last lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(20);
    lines[from..].join("\n")
}

/// A child process whose stdout and stderr go to a log file, started and
/// waited for until it prints its ready line.
pub(crate) struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `binary` and returns once a stdout line contains `marker`,
    /// with that line. Stdout keeps being copied to the log afterwards.
    pub(crate) async fn start(
        binary: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
        marker: &'static str,
    ) -> anyhow::Result<(Self, String)> {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut stdout_log = File::options().create(true).append(true).open(&log)?;
        let mut child = Command::new(binary)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout of {}", binary.display()))?;
        let (ready_tx, ready_rx) = oneshot::channel();
        // A thread, not a task: it must keep draining the pipe (so the child
        // never blocks on a full one) whatever runtime the caller is on.
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
        let mut process = Process {
            child: Some(child),
            log,
        };
        let what = binary.display().to_string();
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(line)) => Ok((process, line)),
            Ok(Err(_)) => {
                process.kill();
                bail!(
                    "{what} exited before printing {marker:?}; its log {}:\n{}",
                    process.log.display(),
                    log_tail(&process.log)
                )
            }
            Err(_) => {
                process.kill();
                bail!(
                    "{what} did not print {marker:?} within {READY_TIMEOUT:?}; its log {}:\n{}",
                    process.log.display(),
                    log_tail(&process.log)
                )
            }
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `timeout`).
    pub(crate) async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("not running");
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        send_signal(child.id(), "TERM")?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("did not exit within {timeout:?} of SIGTERM; killed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a system tool (`ip`, `nft`, `mount`…) to its end; its standard
/// error becomes the error when it fails.
pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
