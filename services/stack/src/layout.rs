//! The layout step of a stack: operations' job, done here before any
//! gateway or worker starts, since services only verify the layout
//! (`protocol::setup::verify_when_ready`) and refuse to start without it.

use anyhow::Context;
use async_nats::jetstream;
use protocol::access::{NatsAccess, Role};
use protocol::setup::{ensure_when_ready, LayoutConfig, SETUP_PATIENCE};

/// Applies the layout the services started with `env` (on top of this
/// process's environment) will verify, on the NATS at `nats_url` (one URL or
/// a cluster's seed list), as ops. Waits for a cluster that is still forming.
pub async fn apply_for_services(
    nats_url: &str,
    ops: &NatsAccess,
    env: &[(String, String)],
) -> anyhow::Result<()> {
    let config = LayoutConfig::from_env_overrides(env)
        .context("reading the layout settings of the services' environment")?;
    let (options, _connection) = protocol::connect::options("stack-layout");
    let options = ops.apply(Role::Ops, options)?;
    let client = options
        .connect(protocol::connect::seed_list(nats_url))
        .await
        .with_context(|| format!("connecting to {nats_url} to apply the layout"))?;
    let js = jetstream::new(client.clone());
    ensure_when_ready(&js, &config, SETUP_PATIENCE)
        .await
        .context("applying the layout")?;
    client.flush().await.context("flushing NATS")?;
    Ok(())
}
