//! Packet loss on loopback: where the processes share one network (no
//! hosts of their own), a lossy link is an nftables rule in the machine's
//! own namespace that drops a share of the TCP packets to and from some
//! ports (a nats-server's client port, a node's client and route ports):
//! every link to those ports crawls, not one process's. Each rule set is a
//! table of its own, named after this process, and is removed when the
//! [`LoopbackLoss`] drops (also while a test panics); tables of a run that
//! was killed outright are removed by the next one.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

/// Lossy links on loopback until dropped.
#[derive(Debug)]
pub struct LoopbackLoss {
    table: String,
}

impl LoopbackLoss {
    /// Drops `percent` % of the TCP packets on `lo` whose source or
    /// destination port is one of `ports` (`numgen random`).
    pub fn start(ports: &[u16], percent: u8) -> anyhow::Result<Self> {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        if ports.is_empty() {
            bail!("no port to make lossy");
        }
        remove_stale();
        let table = format!(
            "chat_loss_{}_{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let set = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let share = drop_share(percent);
        // Only the input hook: a loopback packet passes output and input
        // once each, so dropping in one of them drops `percent` % of them.
        let script = format!(
            "table inet {table} {{\n\
             \tchain input {{ type filter hook input priority 0; policy accept; \
             iifname \"lo\" tcp dport {{ {set} }} {share}; \
             iifname \"lo\" tcp sport {{ {set} }} {share}; }}\n\
             }}\n"
        );
        nft_script(&script).context("adding the lossy-link rules (apt-get install nftables)")?;
        Ok(Self { table })
    }
}

impl Drop for LoopbackLoss {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The nftables statement that drops `percent` % of the packets it sees
/// (`numgen random mod 100` is 0–99, so 100 % is a plain drop).
pub(crate) fn drop_share(percent: u8) -> String {
    if percent >= 100 {
        "drop".to_string()
    } else {
        format!("numgen random mod 100 < {percent} drop")
    }
}

/// Removes the tables of runs that were killed outright
/// (`chat_loss_<pid>_<n>` whose process is gone): a rule left on `lo`
/// would keep dropping packets of whatever uses that port next.
fn remove_stale() {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(table) = line.strip_prefix("table inet ") else {
            continue;
        };
        let Some(pid) = table
            .strip_prefix("chat_loss_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", table.trim()])
                .status();
        }
    }
}

/// Applies an nftables script in this namespace.
fn nft_script(script: &str) -> anyhow::Result<()> {
    let file = tempfile::Builder::new().prefix("chat-loss-").tempfile()?;
    std::fs::write(file.path(), script)?;
    let out = Command::new("nft")
        .arg("-f")
        .arg(file.path())
        .stdin(Stdio::null())
        .output()
        .context("running nft")?;
    if !out.status.success() {
        bail!(
            "nft -f failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
