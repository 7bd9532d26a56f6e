//! W3C trace context (`traceparent`, `tracestate`) carried in NATS message
//! headers, so one trace covers gateway → work-queue → worker → model.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Writes the current span's context into `headers` (nothing when the span
/// is not sampled or tracing export is off).
pub fn inject(headers: &mut HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// Makes `span` a child of the context carried in `headers`, if any.
pub fn adopt(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let Some(headers) = headers else { return };
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
}

/// Makes `span` a child of a `traceparent` (and `tracestate`) given as
/// strings, e.g. from an HTTP request.
pub fn adopt_w3c(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent);
    if let Some(state) = tracestate {
        headers.insert("tracestate", state);
    }
    adopt(span, Some(&headers));
}
