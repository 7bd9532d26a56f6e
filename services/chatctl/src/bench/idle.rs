//! Connections: how long a WebSocket takes to be attached (`ready`), and
//! what thousands of idle ones cost the gateways in resident memory.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};

use super::socket::{Attach, Endpoint, Socket};
use super::stats::Samples;

/// Connect + `ready` through `endpoint`: `samples` new sessions, then the
/// same sessions attached again with their tokens; `concurrency` at a time.
pub async fn connect_latency(
    endpoint: &Endpoint,
    samples: usize,
    concurrency: usize,
) -> anyhow::Result<(Samples, Samples)> {
    let timed = |attach: Attach| async move {
        let start = Instant::now();
        let (socket, ready) = Socket::connect(endpoint, &attach).await?;
        let took = start.elapsed();
        socket.close().await;
        Ok::<_, anyhow::Error>((took, ready))
    };
    let fresh: Vec<_> = futures::stream::iter(0..samples)
        .map(|_| timed(Attach::default()))
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
        .context("opening new sessions")?;
    let mut new_sessions = Samples::with_capacity(samples);
    let mut attach = Vec::with_capacity(samples);
    for (took, ready) in fresh {
        new_sessions.push(took);
        attach.push(Attach {
            session: Some((ready.session_id, ready.token)),
            after_seq: None,
        });
    }
    let again: Vec<_> = futures::stream::iter(attach)
        .map(timed)
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
        .context("attaching to existing sessions")?;
    let mut existing = Samples::with_capacity(samples);
    for (took, _) in again {
        existing.push(took);
    }
    Ok((new_sessions, existing))
}

/// What holding idle connections cost.
#[derive(Debug)]
pub struct IdleOutcome {
    pub connections: usize,
    pub open_secs: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub gateways: Vec<(String, usize)>,
}

impl IdleOutcome {
    pub fn bytes_per_connection(&self) -> f64 {
        (self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 * 1024.0)
            / self.connections.max(1) as f64
    }
}

/// Opens `n` idle WebSockets (each a new session) and keeps them while the
/// resident memory of `pids` is read; then closes them.
pub async fn hold(
    endpoint: &Endpoint,
    n: usize,
    concurrency: usize,
    pids: &[u32],
    settle: Duration,
) -> anyhow::Result<IdleOutcome> {
    let rss_before_kib = total_rss_kib(pids)?;
    let start = Instant::now();
    let attach = Attach::default();
    let sockets: Vec<(Socket, _)> = futures::stream::iter(0..n)
        .map(|_| Socket::connect(endpoint, &attach))
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
        .with_context(|| format!("opening {n} idle connections"))?;
    let open_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss_after_kib = total_rss_kib(pids)?;
    let mut gateways: Vec<(String, usize)> = Vec::new();
    for (_, ready) in &sockets {
        match gateways.iter_mut().find(|(node, _)| *node == ready.node) {
            Some((_, count)) => *count += 1,
            None => gateways.push((ready.node.clone(), 1)),
        }
    }
    gateways.sort();
    let connections = sockets.len();
    // Closing ten thousand sockets politely takes longer than it teaches.
    drop(sockets);
    Ok(IdleOutcome {
        connections,
        open_secs,
        rss_before_kib,
        rss_after_kib,
        gateways,
    })
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

fn total_rss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|&p| rss_kib(p)).sum()
}

/// Pids of running processes whose executable name is `name` (for a stack
/// this tool did not start).
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_memory_is_readable() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(rss_kib(u32::MAX).is_err());
    }
}
