use clap::Parser;
use gateway::GatewayConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::parse();
    telemetry::init_logging("gateway");
    let nats_url = config.nats_url.clone();
    let running = gateway::spawn(config).await?;
    println!(
        "gateway {} listening on http://{} nats={nats_url}",
        running.node(),
        running.addr()
    );
    telemetry::shutdown::signal().await;
    tracing::info!("shutting down");
    let result = running.shutdown().await;
    telemetry::shutdown();
    result
}
