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
    shutdown_signal().await;
    tracing::info!("shutting down");
    let result = running.shutdown().await;
    telemetry::shutdown();
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "listening for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "listening for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
