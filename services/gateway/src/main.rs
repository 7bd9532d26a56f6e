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
    shutdown_signal().await;
    tracing::info!("shutting down");
    let result = running.shutdown().await;
    telemetry::shutdown();
    result
}

/// SIGTERM (an orchestrator) or Ctrl-C (a terminal).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
