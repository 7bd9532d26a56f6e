use clap::Parser;
use worker::WorkerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::parse();
    telemetry::init_logging("worker");
    let nats_url = config.nats_url.clone();
    let backend = config.backend.as_str();
    let running = match worker::spawn(config).await {
        Ok(running) => running,
        Err(e) => {
            // A layout that differs from the flags lands here: say which setting.
            tracing::error!(error = format!("{e:#}"), "worker did not start");
            telemetry::shutdown();
            return Err(e);
        }
    };
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
