//! `chatctl credentials` (run by `just up` and `just cluster up`): makes the
//! NATS credentials of this machine's deployment on first start and reuses
//! them after (`credentials` crate; README, "NATS access"), and renders the
//! single server's configuration with them.

use std::path::PathBuf;

use anyhow::Context;
use credentials::NatsSecurity;
use protocol::access::Role;
use stack::project::project_dir;

/// Flags of `chatctl credentials`.
#[derive(Clone, Debug, clap::Args)]
pub struct CredentialsArgs {
    /// Where the credentials live (default: run/credentials of the project).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also a local CA and a server certificate (for `NATS_TLS=1`).
    #[arg(long)]
    pub tls: bool,
    /// A further name or address the server certificate must cover.
    #[arg(long = "tls-name")]
    pub tls_names: Vec<String>,
    /// Render a nats-server configuration: this base file (the project's
    /// nats/nats-server.conf) followed by the authorization (and TLS) blocks...
    #[arg(long, requires = "server_config_out")]
    pub server_config_base: Option<PathBuf>,
    /// ...written here, mode 0600.
    #[arg(long, requires = "server_config_base")]
    pub server_config_out: Option<PathBuf>,
    /// Hand the credentials out to a container deployment: DIR/<role>/
    /// gets that role's nkey (and the CA), DIR/nats/ a config per
    /// --cluster-node with the TLS files (deploy/compose.yaml).
    #[arg(long)]
    pub hand_out: Option<PathBuf>,
    /// With --hand-out: a NATS node's host name (repeat for each); the
    /// server certificate covers it, and it gets DIR/nats/<name>.conf.
    #[arg(long = "cluster-node", requires = "hand_out")]
    pub cluster_nodes: Vec<String>,
}

pub fn run(args: CredentialsArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .unwrap_or_else(|| project_dir().join("run/credentials"));
    let mut tls_names = args.tls_names.clone();
    tls_names.extend(args.cluster_nodes.iter().cloned());
    let security = NatsSecurity::ensure(&dir, args.tls, &tls_names)
        .with_context(|| format!("credentials in {}", dir.display()))?;
    if let (Some(base), Some(out)) = (args.server_config_base, args.server_config_out) {
        let base_text = std::fs::read_to_string(&base)
            .with_context(|| format!("reading {}", base.display()))?;
        let text = format!(
            "# Rendered by `chatctl credentials` from {} and the credentials in {}.\n{base_text}\n{}",
            base.display(),
            dir.display(),
            security.server_conf()?
        );
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        credentials::write_private(&out, &text)?;
    }
    if let Some(out) = &args.hand_out {
        crate::handout::hand_out(&security, out, &args.cluster_nodes)
            .with_context(|| format!("handing the credentials out to {}", out.display()))?;
        println!("credentials: handed out to {}", out.display());
    }
    for role in Role::ALL {
        println!(
            "credentials: {role} nkey {}",
            security.credentials.seed_file(role).display()
        );
    }
    if let Some(tls) = &security.tls {
        println!("credentials: TLS CA {}", tls.ca_cert.display());
    }
    Ok(())
}
