//! Logging, tracing, metrics and the shutdown signal for every binary, set up
//! in one place.
//!
//! Logs are human-readable by default and JSON with `LOG_FORMAT=json`; the
//! level comes from `RUST_LOG` (default `info`). Metrics are recorded with
//! the `metrics` facade and rendered as Prometheus text by the handle
//! [`install_metrics`] returns.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

pub mod shutdown;
pub mod trace_context;

static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global tracing subscriber. Call once, first thing in `main`,
/// inside the Tokio runtime (the OTLP exporter uses it).
///
/// Spans are exported with OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, honouring the standard
/// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
/// `OTEL_BSP_*` variables; nothing is exported otherwise.
pub fn init_logging(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let otel = otlp_configured()
        .then(|| otel_layer(service))
        .and_then(|layer| match layer {
            Ok(layer) => Some(layer),
            Err(e) => {
                eprintln!("OpenTelemetry export disabled: {e}");
                None
            }
        });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
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

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()))
}

fn otel_layer<S>(
    service: &str,
) -> anyhow::Result<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    // OTEL_SERVICE_NAME, when set, wins over the binary's own name.
    let service_name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(service.to_string());
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let _ = TRACER_PROVIDER.set(provider);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Flushes spans not yet exported. Call before the process exits.
pub fn shutdown() {
    if let Some(provider) = TRACER_PROVIDER.get() {
        if let Err(e) = provider.shutdown() {
            eprintln!("OpenTelemetry shutdown: {e}");
        }
    }
}

/// Installs the global Prometheus recorder and returns the handle whose
/// `render()` is the `/metrics` body. A second call (tests starting several
/// services in one process) returns a handle that renders the same registry.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // The bucket list is a constant that is known to be valid.
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS_SECONDS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            // Fails only when another recorder is installed already (a test
            // binary mixing services); the fresh handle then renders nothing,
            // which a metrics test would show, rather than a crash.
            let handle = builder
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle());
            spawn_upkeep(handle.clone(), METRICS_UPKEEP_PERIOD);
            handle
        })
        .clone()
}

/// How often the histograms' pending samples are folded into their buckets.
pub const METRICS_UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Folds the histograms' pending samples into their buckets every `period`,
/// on a thread of its own (no runtime needed, and it lives as long as the
/// process).
///
/// The recorder keeps every recorded histogram sample (8 bytes each) until
/// `run_upkeep` or a `/metrics` render drains it. Without this, a process
/// nobody scrapes grows with every chunk it times: ~1 KiB per answer in a
/// worker, linearly, forever.
pub fn spawn_upkeep(handle: PrometheusHandle, period: Duration) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        eprintln!("metrics upkeep thread not started: {e}; histograms drain only on /metrics");
    }
}

/// Histogram buckets: from half a millisecond (a chunk hop on loopback) to a
/// minute (a long generation).
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
