use clap::Parser;
use worker::WorkerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::parse();
    telemetry::init_logging("worker");
    let nats_url = config.nats_url.clone();
    let backend = config.backend.as_str();
    let running = worker::spawn(config).await?;
    println!(
        "worker {} metrics on http://{} nats={nats_url} backend={backend}",
        running.node(),
        running.metrics_addr()
    );
    telemetry::shutdown::signal().await;
    tracing::info!("shutting down");
    let result = running.shutdown().await;
    telemetry::shutdown();
    result
}
