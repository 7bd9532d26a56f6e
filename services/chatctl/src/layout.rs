//! `chatctl layout apply|check`: the JetStream layout as operations' job.
//! `apply` creates or updates the streams, the workers' consumer and the
//! sessions bucket (`just up` runs it before starting the services);
//! `check` reports every setting that differs from the configuration, the
//! way a gateway or worker would refuse to start on it. Both read the same
//! flags and environment variables as the services (`CHAT_*`).

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use protocol::setup::{self, LayoutConfig, LayoutError, SETUP_PATIENCE};

/// Flags of `chatctl layout`.
#[derive(Clone, Debug, clap::Args)]
pub struct LayoutArgs {
    #[command(subcommand)]
    pub action: LayoutAction,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum LayoutAction {
    /// Create the streams, the consumer and the bucket, or update them to
    /// this configuration; prints what changed, one line per part.
    Apply(LayoutTarget),
    /// Compare the server's layout with this configuration; prints every
    /// difference and exits 1 when there is one (or a part is missing).
    Check(LayoutTarget),
}

/// Where the layout is, and what it should be.
#[derive(Clone, Debug, clap::Args)]
pub struct LayoutTarget {
    /// NATS server URL, or a comma-separated seed list of cluster nodes.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// How long to wait for NATS (a cluster that is still forming).
    #[arg(long, default_value_t = SETUP_PATIENCE.as_secs())]
    pub patience_secs: u64,
    #[command(flatten)]
    pub layout: LayoutConfig,
    /// The ops nkey (`run/credentials/ops.nk` after `just up`) and the CA.
    #[command(flatten)]
    pub nats_access: protocol::access::NatsAccess,
}

/// Runs `apply` or `check`; the process exit code.
pub async fn run(args: LayoutArgs) -> anyhow::Result<i32> {
    match args.action {
        LayoutAction::Apply(target) => apply(&target).await,
        LayoutAction::Check(target) => check(&target).await,
    }
}

async fn apply(target: &LayoutTarget) -> anyhow::Result<i32> {
    let js = connect(&target.nats_url, &target.nats_access).await?;
    let applied = setup::apply_when_ready(&js, &target.layout, patience(target))
        .await
        .context("applying the layout")?;
    for part in &applied.parts {
        println!("layout: {part}");
    }
    js.client().flush().await.context("flushing NATS")?;
    Ok(0)
}

async fn check(target: &LayoutTarget) -> anyhow::Result<i32> {
    let js = connect(&target.nats_url, &target.nats_access).await?;
    match setup::verify_when_ready(&js, &target.layout, patience(target)).await {
        Ok(_) => {
            println!("layout matches");
            Ok(0)
        }
        Err(LayoutError::Nats(e)) => Err(e).context("reading the layout"),
        Err(differs) => {
            for line in differs.lines() {
                println!("layout: {line}");
            }
            println!("layout: run chatctl layout apply (with these flags) to make it match");
            Ok(1)
        }
    }
}

fn patience(target: &LayoutTarget) -> Duration {
    Duration::from_secs(target.patience_secs)
}

/// The one place `chatctl layout` connects to NATS (credentials for the
/// ops role belong here). The first connect retries, as the services' does.
async fn connect(
    nats_url: &str,
    access: &protocol::access::NatsAccess,
) -> anyhow::Result<jetstream::Context> {
    let (options, _connection) = protocol::connect::options("chatctl-layout");
    let options = access.apply(protocol::access::Role::Ops, options)?;
    let client = options
        .connect(protocol::connect::seed_list(nats_url))
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    Ok(jetstream::new(client))
}
