//! `/metrics` (Prometheus text) and `/health` on `--metrics-listen`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct HttpState {
    metrics: PrometheusHandle,
    node: String,
    client: async_nats::Client,
}

pub(crate) fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    node: String,
    client: async_nats::Client,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(health))
        .with_state(HttpState {
            metrics,
            node,
            client,
        });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    })
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    let connected = state.client.connection_state() == async_nats::connection::State::Connected;
    let status = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if connected { "ok" } else { "degraded" },
        "node": state.node,
        "nats": if connected { "connected" } else { "disconnected" },
    });
    (status, Json(body))
}
