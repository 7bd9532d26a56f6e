//! Our own binaries, `gateway` and `worker`, as processes of a stack: the
//! flags each gets, its node name, the ready line it prints and the address
//! that line gives.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, Context};

use crate::hosts::Host;
use crate::process::Process;

/// Which binary a [`Service`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Gateway,
    Worker,
}

impl Role {
    pub(crate) fn binary(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Worker => "worker",
        }
    }

    pub(crate) fn marker(self) -> &'static str {
        match self {
            Role::Gateway => "listening on",
            Role::Worker => "metrics on",
        }
    }

    /// The NATS identity the binary connects with.
    pub(crate) fn access_role(self) -> protocol::access::Role {
        match self {
            Role::Gateway => protocol::access::Role::Gateway,
            Role::Worker => protocol::access::Role::Worker,
        }
    }

    pub(crate) fn node(self, index: usize) -> String {
        match self {
            Role::Gateway => format!("gw-{index}"),
            Role::Worker => format!("w-{index}"),
        }
    }
}

/// One gateway or worker: its process and the address it serves, kept
/// across restarts, and the host it runs on when it has one of its own.
pub(crate) struct Service {
    pub(crate) process: Process,
    pub(crate) addr: SocketAddr,
    pub(crate) host: Option<Host>,
}

/// Everything needed to (re)start a gateway or worker.
pub(crate) struct Launcher {
    pub(crate) bin_dir: PathBuf,
    pub(crate) logs: PathBuf,
    pub(crate) env: Vec<(String, String)>,
    /// Each service gets its role's nkey (and the CA with TLS).
    pub(crate) security: credentials::NatsSecurity,
    /// Starts tried before giving up: more than one against a cluster, where
    /// reading the R3 layout can time out while it settles or a node is down.
    pub(crate) attempts: usize,
}

impl Launcher {
    /// [`Launcher::start_once`], tried up to `attempts` times.
    pub(crate) async fn start(
        &self,
        role: Role,
        index: usize,
        nats_url: &str,
        port: u16,
        host: Option<Host>,
    ) -> anyhow::Result<Service> {
        let mut attempt = 1;
        loop {
            match self
                .start_once(role, index, nats_url, port, host.clone())
                .await
            {
                Ok(service) => return Ok(service),
                Err(e) if attempt < self.attempts => {
                    eprintln!(
                        "stack: {} did not start (attempt {attempt}): {e:#}; trying again",
                        role.node(index)
                    );
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts one service; `port` 0 lets it choose, a restart passes the
    /// old one. With a `host`, it runs inside that host's namespace and
    /// listens on the host's address.
    pub(crate) async fn start_once(
        &self,
        role: Role,
        index: usize,
        nats_url: &str,
        port: u16,
        host: Option<Host>,
    ) -> anyhow::Result<Service> {
        let node = role.node(index);
        let listen = match &host {
            Some(host) => format!("{}:{port}", host.addr),
            None => format!("127.0.0.1:{port}"),
        };
        let listen_flag = match role {
            Role::Gateway => "--listen",
            Role::Worker => "--metrics-listen",
        };
        let binary = self.bin_dir.join(role.binary());
        // In a host of its own: `ip netns exec NS binary …` (which execs
        // the binary, so the pid stays the service's).
        let mut args: Vec<String> = match &host {
            Some(host) => vec![
                "netns".into(),
                "exec".into(),
                host.namespace.clone(),
                binary.display().to_string(),
            ],
            None => Vec::new(),
        };
        args.extend([
            "--nats-url".into(),
            nats_url.into(),
            "--node".into(),
            node.clone(),
            listen_flag.into(),
            listen,
        ]);
        let program = match &host {
            Some(_) => PathBuf::from("ip"),
            None => binary,
        };
        let log = self.logs.join(format!("{node}.log"));
        let access = self.security.access(role.access_role());
        let mut env = self.env.clone();
        env.extend(
            access
                .nats_nkey_file
                .map(|f| ("NATS_NKEY_FILE".into(), f.display().to_string())),
        );
        env.extend(
            access
                .nats_ca_file
                .map(|f| ("NATS_CA_FILE".into(), f.display().to_string())),
        );
        let (process, line) = Process::start(&program, &args, &env, log, role.marker())
            .await
            .with_context(|| format!("starting {node}"))?;
        let addr = addr_after(&line, role.marker())?;
        Ok(Service {
            process,
            addr,
            host,
        })
    }
}

/// The `gw-<i>`/`w-<i>` service `i` of `list`, or an error naming how many
/// there are.
pub(crate) fn service(list: &mut [Service], role: Role, i: usize) -> anyhow::Result<&mut Service> {
    let count = list.len();
    list.get_mut(i)
        .ok_or_else(|| anyhow!("there is no {} {i} (the stack has {count})", role.binary()))
}

/// Parses `http://127.0.0.1:PORT` out of a ready line, after `marker`.
fn addr_after(line: &str, marker: &str) -> anyhow::Result<SocketAddr> {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.trim_start().strip_prefix("http://"))
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '/').next())
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| anyhow!("no address after {marker:?} in {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines_give_their_address() {
        let line = "gateway gw-1 listening on http://127.0.0.1:3001 nats=nats://127.0.0.1:4222";
        assert_eq!(
            addr_after(line, "listening on").unwrap(),
            "127.0.0.1:3001".parse().unwrap()
        );
        let line = "worker w-1 metrics on http://127.0.0.1:9101/metrics backend=demo";
        assert_eq!(
            addr_after(line, "metrics on").unwrap(),
            "127.0.0.1:9101".parse().unwrap()
        );
        assert!(addr_after("listening on nothing", "listening on").is_err());
    }
}
