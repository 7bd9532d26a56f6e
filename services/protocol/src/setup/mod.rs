//! The JetStream layout (README.md, "The layout"; `nats/*.json` is the same
//! layout as files for the `nats` CLI). It belongs to operations:
//! `chatctl layout apply` creates or updates it ([`apply`],
//! [`ensure_when_ready`]) with credentials allowed to administer JetStream,
//! and gateways and workers only read it at start ([`verify_when_ready`]):
//! a service whose [`LayoutConfig`] differs from what the server holds
//! refuses to start, naming the setting, instead of rewriting the layout
//! for every other process.
//!
//! - `config`: [`LayoutConfig`] and the stream, consumer and bucket configs;
//! - `apply`: create or update every part, saying what changed;
//! - `verify`: read every part and compare it with the configuration;
//! - `ready`: both, for a process started next to a NATS that may not
//!   answer yet.

mod apply;
mod config;
mod ready;
mod verify;

use async_nats::jetstream::{self, consumer::pull, kv, stream};

pub use apply::{apply, ensure, Applied, Change, PartOutcome};
pub use config::LayoutConfig;
pub use ready::{apply_when_ready, ensure_when_ready, verify_when_ready, SETUP_PATIENCE};
pub use verify::{verify, Drift, LayoutError};

use crate::subjects;

/// Why the layout could not be set up or read: which part, and what NATS said.
#[derive(Debug, thiserror::Error)]
#[error("JetStream layout, {part}: {source}")]
pub struct SetupError {
    part: String,
    source: async_nats::Error,
}

fn failed<E: Into<async_nats::Error>>(part: impl Into<String>) -> impl FnOnce(E) -> SetupError {
    let part = part.into();
    move |e| SetupError {
        part,
        source: e.into(),
    }
}

/// The parts of the layout a service works with once it is set up.
#[derive(Clone)]
pub struct Layout {
    pub requests: stream::Stream,
    pub events: stream::Stream,
    pub history: stream::Stream,
    pub dead: stream::Stream,
    pub sessions: kv::Store,
}

/// Binds to the workers' consumer (after [`ensure`] or [`verify`]): an
/// info request, nothing is created.
pub async fn workers_consumer(
    layout: &Layout,
) -> Result<jetstream::consumer::Consumer<pull::Config>, SetupError> {
    layout
        .requests
        .get_consumer(subjects::WORKERS_CONSUMER)
        .await
        .map_err(failed(format!("consumer {}", subjects::WORKERS_CONSUMER)))
}

/// How a part is named in messages: `stream CHAT_EVENTS`.
fn stream_part(name: &str) -> String {
    format!("stream {name}")
}

fn consumer_part() -> String {
    format!("consumer {}", subjects::WORKERS_CONSUMER)
}

fn bucket_part() -> String {
    format!("KV bucket {}", subjects::SESSIONS_BUCKET)
}

/// The stream that holds the sessions bucket.
fn bucket_stream() -> String {
    format!("KV_{}", subjects::SESSIONS_BUCKET)
}
