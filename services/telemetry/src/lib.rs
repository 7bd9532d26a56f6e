//! Logging, tracing and metrics for every binary, set up in one place.
//!
//! Logs are human-readable by default and JSON with `LOG_FORMAT=json`; the
//! level comes from `RUST_LOG` (default `info`). Metrics are recorded with
//! the `metrics` facade and rendered as Prometheus text by the handle
//! [`install_metrics`] returns.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global tracing subscriber. Call once, first thing in `main`.
pub fn init_logging(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(fmt::layer().json().with_current_span(true))
            .try_init()
    } else {
        registry.with(fmt::layer().with_target(false)).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "logging initialised");
    }
}

/// Installs the global Prometheus recorder and returns the handle whose
/// `render()` is the `/metrics` body. A second call (tests starting several
/// services in one process) returns a handle that renders the same registry.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // The bucket list is a constant that is known to be valid.
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS_SECONDS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            // Fails only when another recorder is installed already (a test
            // binary mixing services); the fresh handle then renders nothing,
            // which a metrics test would show, rather than a crash.
            builder
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone()
}

/// Histogram buckets: from half a millisecond (a chunk hop on loopback) to a
/// minute (a long generation).
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
