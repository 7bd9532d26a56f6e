//! `chatctl credentials --hand-out DIR --cluster-node …`: what the compose
//! deployment's one-shot credentials step (deploy/compose.yaml) gives each
//! container, one folder per volume, so a container mounts only its own:
//!
//! - `DIR/<role>/`: that role's nkey seed (`<role>.nk`) and, with TLS, the
//!   CA (`ca.pem`): gateway, worker and ops each see no other seed;
//! - `DIR/nats/`: one configuration per node (`<node>.conf`, from the same
//!   `nats/cluster/node.conf.template` as `just cluster up`: the roles'
//!   public keys, the routes' password and TLS both ways), the server's
//!   certificate and key, and the CA. The nodes read it at `/etc/nats`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use credentials::tls::TlsFiles;
use credentials::{write_private, NatsSecurity};
use protocol::access::Role;

/// The node template, the one `just cluster up` renders (compiled in: the
/// image has no checkout).
const NODE_TEMPLATE: &str = include_str!("../../../nats/cluster/node.conf.template");

/// Where the node containers mount their folder (`nats` in the hand-out).
const NODE_CONFIG_DIR: &str = "/etc/nats";

/// Where the node containers keep their JetStream store (a named volume).
const NODE_STORE_DIR: &str = "/data";

/// The standard ports inside each node's container.
const CLIENT_PORT: u16 = 4222;
const ROUTE_PORT: u16 = 6222;
const MONITOR_PORT: u16 = 8222;

/// Writes the hand-out of `security` for the nodes named `nodes` (their
/// host names on the deployment's network) into `out`.
pub fn hand_out(security: &NatsSecurity, out: &Path, nodes: &[String]) -> anyhow::Result<()> {
    for role in Role::ALL {
        let dir = out.join(role.name());
        let seed = security.credentials.seed_file(role);
        copy_private(&seed, &dir.join(format!("{}.nk", role.name())))?;
        if let Some(tls) = &security.tls {
            copy_private(&tls.ca_cert, &dir.join("ca.pem"))?;
        }
    }
    if nodes.is_empty() {
        return Ok(());
    }
    let dir = out.join("nats");
    let in_container = security.tls.as_ref().map(|tls| {
        for (from, name) in [
            (&tls.ca_cert, "ca.pem"),
            (&tls.server_cert, "server.pem"),
            (&tls.server_key, "server-key.pem"),
        ] {
            copy_private(from, &dir.join(name))?;
        }
        anyhow::Ok(TlsFiles {
            ca_cert: Path::new(NODE_CONFIG_DIR).join("ca.pem"),
            server_cert: Path::new(NODE_CONFIG_DIR).join("server.pem"),
            server_key: Path::new(NODE_CONFIG_DIR).join("server-key.pem"),
        })
    });
    let in_container = in_container.transpose()?;
    for node in nodes {
        let text = node_config(security, in_container.as_ref(), node, nodes)?;
        write_private(&dir.join(format!("{node}.conf")), &text)
            .with_context(|| format!("writing the config of {node}"))?;
    }
    Ok(())
}

/// One node's configuration: listening on every address of its container,
/// advertising its host name to clients and routes (so a client that
/// learns the other nodes dials names the certificate covers).
fn node_config(
    security: &NatsSecurity,
    tls: Option<&TlsFiles>,
    node: &str,
    nodes: &[String],
) -> anyhow::Result<String> {
    let mut server = security.credentials.authorization_conf()?;
    let mut routes_security = security.credentials.route_authorization_conf()?;
    if let Some(tls) = tls {
        server.push_str(&tls.client_conf());
        routes_security.push_str("\n  ");
        routes_security.push_str(&tls.route_conf());
    }
    server.push_str(&format!("client_advertise: \"{node}:{CLIENT_PORT}\"\n"));
    routes_security.push_str(&format!("\n  advertise: \"{node}:{ROUTE_PORT}\""));
    let routes = nodes
        .iter()
        .map(|n| {
            security
                .credentials
                .route_url(&format!("{n}:{ROUTE_PORT}"))
                .map(|url| format!("    {url}"))
        })
        .collect::<Result<Vec<_>, _>>()?
        .join("\n");
    let sync = std::env::var("NATS_SYNC_INTERVAL")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| format!("  sync_interval: {s}"))
        .unwrap_or_default();
    let text = NODE_TEMPLATE
        .replace("@@SERVER_NAME@@", node)
        .replace("@@CLIENT_LISTEN@@", &format!("0.0.0.0:{CLIENT_PORT}"))
        .replace("@@MONITOR_LISTEN@@", &format!("0.0.0.0:{MONITOR_PORT}"))
        .replace("@@ROUTE_LISTEN@@", &format!("0.0.0.0:{ROUTE_PORT}"))
        .replace("@@STORE_DIR@@", NODE_STORE_DIR)
        .replace("@@SYNC_INTERVAL@@", &sync)
        .replace("@@ROUTES@@", &routes)
        .replace("@@SECURITY@@", &server)
        .replace("@@ROUTE_SECURITY@@", &routes_security);
    if let Some(at) = text.find("@@") {
        bail!("the node template has a placeholder left at byte {at}");
    }
    Ok(text)
}

/// Copies `from` to `to` (mode 0600), making `to`'s folder.
fn copy_private(from: &Path, to: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    write_private(to, &text).with_context(|| format!("writing {}", to.display()))?;
    Ok(())
}

/// The hand-out folder of `role` under `out` (what its containers mount).
pub fn role_dir(out: &Path, role: Role) -> PathBuf {
    out.join(role.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_gets_its_own_seed_and_each_node_a_config() {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<String> = ["nats-1", "nats-2", "nats-3"].map(String::from).to_vec();
        let security = NatsSecurity::ensure(&dir.path().join("all"), true, &nodes).unwrap();
        let out = dir.path().join("out");
        hand_out(&security, &out, &nodes).unwrap();
        for role in Role::ALL {
            let mut names: Vec<String> = std::fs::read_dir(role_dir(&out, role))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, vec!["ca.pem".to_string(), format!("{role}.nk")]);
        }
        let conf = std::fs::read_to_string(out.join("nats/nats-2.conf")).unwrap();
        assert!(conf.contains("server_name: nats-2"), "{conf}");
        assert!(conf.contains("client_advertise: \"nats-2:4222\""), "{conf}");
        assert!(conf.contains("advertise: \"nats-2:6222\""), "{conf}");
        assert!(conf.contains("@nats-3:6222"), "{conf}");
        assert!(
            conf.contains("cert_file: \"/etc/nats/server.pem\""),
            "{conf}"
        );
        assert!(conf.contains("verify: true"), "{conf}");
        for role in Role::ALL {
            let seed = std::fs::read_to_string(security.credentials.seed_file(role)).unwrap();
            assert!(
                !conf.contains(seed.trim()),
                "{role}'s seed in a node config"
            );
        }
        assert!(out.join("nats/server-key.pem").exists());
    }
}
