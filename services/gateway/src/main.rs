use clap::Parser;
use gateway::GatewayConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::parse();
    telemetry::init_logging("gateway");
    let nats_url = config.nats_url.clone();
    let running = match gateway::spawn(config).await {
        Ok(running) => running,
        Err(e) => {
            // A layout that differs from the flags lands here: say which setting.
            tracing::error!(error = format!("{e:#}"), "gateway did not start");
            telemetry::shutdown();
            return Err(e);
        }
    };
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
