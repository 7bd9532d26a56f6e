//! Hosts of their own on one machine: each host a network namespace with
//! one address on a Linux bridge (`ip netns`, a veth pair per host), so a
//! NATS node, a gateway or a worker has its own IP and its own ports, and
//! the network between hosts can be cut with nftables rules inside a
//! host's namespace (a partition) and healed.
//!
//! Everything a [`HostNetwork`] creates carries a name unique to the run
//! (`cq<pid>g<n>…`), so parallel tests never collide, and is removed when
//! it drops (also while a test panics). A run killed outright leaves its
//! namespaces behind; the next [`HostNetwork::create`] removes those whose
//! creating process is gone. Traffic stays inside the namespaces and the
//! bridge: nothing is routed off the machine and no rule is added outside
//! the namespaces this module creates.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

use crate::process::run;

/// The nftables table a cut adds inside a host's namespace.
const CUT_TABLE: &str = "chat_cut";
/// The nftables table a lossy link adds inside a host's namespace.
const LOSSY_TABLE: &str = "chat_lossy";
/// Where the third octet of each run's `10.77.X.0/24` is claimed, so two
/// runs never put the same subnet on two bridges.
const CLAIMS_DIR: &str = "chat-hosts";

/// Names of the links and namespaces of one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkNames {
    /// Prefix of every name (≤ 10 characters, so `<prefix>v<NN>` fits a
    /// 15-character link name).
    pub prefix: String,
    /// The third octet: the network is `10.77.<octet>.0/24`.
    pub octet: u8,
}

impl NetworkNames {
    fn bridge(&self) -> String {
        format!("{}b", self.prefix)
    }

    /// The namespace of host `label` (`chatc-n1`).
    pub fn namespace(&self, label: &str) -> String {
        format!("{}-{label}", self.prefix)
    }

    /// The bridge's address: how the root namespace (Nginx, tools) reaches
    /// every host.
    pub fn root_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.octet, 1)
    }
}

/// One host: a namespace with one address on the bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub label: String,
    pub namespace: String,
    pub addr: Ipv4Addr,
}

impl Host {
    /// A command that runs `program` inside this host's namespace
    /// (`ip netns exec` execs it, so the child's pid is the program's).
    pub fn command(&self, program: impl Into<PathBuf>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(program.into());
        command
    }
}

/// A bridge and the hosts on it. Dropping it removes them all (processes
/// inside must be stopped first: a namespace lives on while a process
/// uses it).
pub struct HostNetwork {
    names: NetworkNames,
    hosts: Vec<Host>,
    claim: Option<PathBuf>,
    /// False once [`HostNetwork::detach`] handed it to `chatctl cluster down`.
    owned: bool,
}

impl HostNetwork {
    /// Creates a bridge with a fresh, unused `10.77.X.0/24` and names unique
    /// to this process. Fails when the machine does not allow it (not
    /// root, no `ip netns`): callers fall back to loopback.
    pub fn create() -> anyhow::Result<Self> {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("cq{:x}g{:x}", std::process::id(), run % 16);
        let (octet, claim) = claim_octet()?;
        let mut network = Self::create_named(NetworkNames { prefix, octet })?;
        network.claim = Some(claim);
        Ok(network)
    }

    /// Creates the bridge for fixed names (`chatctl cluster up`).
    pub fn create_named(names: NetworkNames) -> anyhow::Result<Self> {
        let network = Self {
            names,
            hosts: Vec::new(),
            claim: None,
            owned: true,
        };
        let bridge = network.names.bridge();
        let cidr = format!("{}/24", network.names.root_addr());
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &cidr, "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        Ok(network)
    }

    pub fn names(&self) -> &NetworkNames {
        &self.names
    }

    /// Adds a host `label` (e.g. `n1`, `gw-0`) with address `10.77.X.<last>`.
    pub fn add_host(&mut self, label: &str, last: u8) -> anyhow::Result<Host> {
        let index = self.hosts.len();
        let host = Host {
            label: label.to_string(),
            namespace: self.names.namespace(label),
            addr: Ipv4Addr::new(10, 77, self.names.octet, last),
        };
        let outer = format!("{}v{index}", self.names.prefix);
        let inner = format!("{}p{index}", self.names.prefix);
        // A veth of a network removed a moment ago may linger while the
        // kernel tears its namespace down.
        let _ = ip(&["link", "del", &outer]);
        ip(&["netns", "add", &host.namespace])?;
        // Recorded at once, so a failure below still removes the namespace.
        self.hosts.push(host.clone());
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &host.namespace])?;
        ip(&["link", "set", &outer, "master", &self.names.bridge(), "up"])?;
        let ns = host.namespace.as_str();
        ip(&["-n", ns, "link", "set", &inner, "name", "eth0"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", host.addr),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(host)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Cuts `host` off: with `from` empty, from everyone (a partition: its
    /// packets are dropped silently both ways, as a failed switch would);
    /// otherwise only from those addresses. Loopback inside the host stays.
    pub fn cut_off(&self, host: &Host, from: &[Ipv4Addr]) -> anyhow::Result<()> {
        let (drop_in, drop_out) = rules_on_links(from, "drop");
        self.add_table(host, CUT_TABLE, &drop_in, &drop_out)
            .context("adding the nftables cut (apt-get install nftables)")
    }

    /// Makes `host`'s links lossy: `percent` % of its packets are dropped
    /// each way (`numgen random`), with `from` empty on every link,
    /// otherwise only on those to and from these addresses, until
    /// [`HostNetwork::heal_lossy`]. TCP retransmits what is lost: traffic
    /// crawls instead of stopping.
    pub fn lossy(&self, host: &Host, from: &[Ipv4Addr], percent: u8) -> anyhow::Result<()> {
        let share = crate::loss::drop_share(percent);
        let (drop_in, drop_out) = rules_on_links(from, &share);
        self.add_table(host, LOSSY_TABLE, &drop_in, &drop_out)
            .context("adding the lossy-link rules (apt-get install nftables)")
    }

    /// Ends [`HostNetwork::lossy`].
    pub fn heal_lossy(&self, host: &Host) -> anyhow::Result<()> {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &host.namespace,
            "nft",
            "delete",
            "table",
            "inet",
            LOSSY_TABLE,
        ]))
    }

    /// Adds table `table` inside `host`'s namespace with one input and one
    /// output rule (its own loopback always passes).
    fn add_table(
        &self,
        host: &Host,
        table: &str,
        rule_in: &str,
        rule_out: &str,
    ) -> anyhow::Result<()> {
        let script = format!(
            "table inet {table} {{\n\
             \tchain input {{ type filter hook input priority 0; policy accept; iifname \"lo\" accept; {rule_in}; }}\n\
             \tchain output {{ type filter hook output priority 0; policy accept; oifname \"lo\" accept; {rule_out}; }}\n\
             }}\n"
        );
        let script_file = tempfile::Builder::new().prefix("chat-nft-").tempfile()?;
        std::fs::write(script_file.path(), script)?;
        run(Command::new("ip")
            .args(["netns", "exec", &host.namespace, "nft", "-f"])
            .arg(script_file.path()))
    }

    /// Removes a cut made by [`HostNetwork::cut_off`].
    pub fn heal(&self, host: &Host) -> anyhow::Result<()> {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &host.namespace,
            "nft",
            "delete",
            "table",
            "inet",
            CUT_TABLE,
        ]))
    }

    /// Leaves the bridge and namespaces in place (for `chatctl cluster
    /// up`); [`remove_network`] removes them later.
    pub fn detach(mut self) -> NetworkNames {
        self.owned = false;
        self.names.clone()
    }
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        if self.owned {
            remove_network(&self.names);
        }
        if let Some(claim) = self.claim.take() {
            let _ = std::fs::remove_file(claim);
        }
    }
}

/// Removes the namespaces and the bridge of a network (their veths go with
/// them). Quiet about what is already gone.
pub fn remove_network(names: &NetworkNames) {
    for namespace in list_namespaces() {
        if namespace.starts_with(&format!("{}-", names.prefix)) {
            let _ = ip(&["netns", "del", &namespace]);
        }
    }
    let _ = ip(&["link", "del", &names.bridge()]);
}

/// Whether this machine lets us make hosts (root and `ip netns`).
pub fn namespaces_available() -> bool {
    Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && std::fs::metadata("/proc/self/ns/net").is_ok()
        && is_root()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn list_namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes what runs of this module left behind when their process was
/// killed outright: namespaces `cq<pid>g<n>-…` whose pid is gone, their
/// bridges and their subnet claims.
fn remove_stale() {
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    for namespace in list_namespaces() {
        let Some(prefix) = namespace.split('-').next() else {
            continue;
        };
        let Some(pid) = prefix
            .strip_prefix("cq")
            .and_then(|rest| rest.split('g').next())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        if !alive(pid) {
            let _ = ip(&["netns", "del", &namespace]);
            let _ = ip(&["link", "del", &format!("{prefix}b")]);
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir().join(CLAIMS_DIR)) {
        for entry in entries.flatten() {
            let owner = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if owner.is_some_and(|pid| !alive(pid)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Claims a third octet no other run holds and no interface uses: a file
/// created exclusively under the temp dir, holding our pid. Octet 0 is left
/// to `chatctl cluster up`.
fn claim_octet() -> anyhow::Result<(u8, PathBuf)> {
    let dir = std::env::temp_dir().join(CLAIMS_DIR);
    std::fs::create_dir_all(&dir)?;
    let in_use = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .context("ip -4 addr show")?
            .stdout,
    )
    .into_owned();
    let start = std::process::id() % 200;
    for step in 0..250u32 {
        let octet = u8::try_from(1 + (start + step) % 250).unwrap_or(1);
        if in_use.contains(&format!("10.77.{octet}.")) {
            continue;
        }
        let path = dir.join(octet.to_string());
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path);
        if let Ok(mut file) = created {
            use std::io::Write;
            writeln!(file, "{}", std::process::id())?;
            return Ok((octet, path));
        }
    }
    bail!("no free 10.77.X.0/24 left for a host network")
}

/// The nftables rules (in, out) that apply `verdict` to every packet, with
/// `from` empty, or only to those from and to these addresses.
fn rules_on_links(from: &[Ipv4Addr], verdict: &str) -> (String, String) {
    if from.is_empty() {
        return (verdict.to_string(), verdict.to_string());
    }
    let set = from
        .iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    (
        format!("ip saddr {{ {set} }} {verdict}"),
        format!("ip daddr {{ {set} }} {verdict}"),
    )
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}
