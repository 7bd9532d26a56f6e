//! Creating or updating the layout: what operations run (`chatctl layout
//! apply`, `just up`, the test harnesses) before any service starts.

use async_nats::jetstream::{self, stream};

use super::verify::{bucket_drift, consumer_drift, read_consumer, read_stream, stream_drift};
use super::{
    bucket_part, bucket_stream, consumer_part, failed, stream_part, Drift, Layout, LayoutConfig,
    SetupError,
};

/// What [`apply`] did to one part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Created,
    /// It existed with these settings different.
    Updated(Vec<Drift>),
    Unchanged,
}

/// One part of the layout and what [`apply`] did to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartOutcome {
    /// `stream CHAT_EVENTS`, `consumer workers`, `KV bucket chat_sessions`.
    pub part: String,
    pub change: Change,
}

impl std::fmt::Display for PartOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.change {
            Change::Created => write!(f, "{}: created", self.part),
            Change::Unchanged => write!(f, "{}: unchanged", self.part),
            Change::Updated(drifts) => {
                let changes: Vec<String> = drifts.iter().map(Drift::change).collect();
                write!(f, "{}: updated ({})", self.part, changes.join(", "))
            }
        }
    }
}

impl PartOutcome {
    /// From what the part was before: `None` when it did not exist.
    fn new(part: String, before: Option<Vec<Drift>>) -> Self {
        let change = match before {
            None => Change::Created,
            Some(drifts) if drifts.is_empty() => Change::Unchanged,
            Some(drifts) => Change::Updated(drifts),
        };
        Self { part, change }
    }
}

/// The applied layout and what changed, part by part.
pub struct Applied {
    pub layout: Layout,
    pub parts: Vec<PartOutcome>,
}

/// Creates every stream, the consumer and the KV bucket, or updates them to
/// `config` when they exist, and says for each what it did. Running it
/// twice gives the same layout (and "unchanged" everywhere).
pub async fn apply(js: &jetstream::Context, config: &LayoutConfig) -> Result<Applied, SetupError> {
    async fn apply_stream(
        js: &jetstream::Context,
        config: stream::Config,
        parts: &mut Vec<PartOutcome>,
    ) -> Result<stream::Stream, SetupError> {
        let name = config.name.clone();
        let before = read_stream(js, &name)
            .await?
            .map(|s| stream_drift(&s.cached_info().config, &config));
        js.create_or_update_stream(config)
            .await
            .map_err(failed(stream_part(&name)))?;
        parts.push(PartOutcome::new(stream_part(&name), before));
        js.get_stream(&name)
            .await
            .map_err(failed(stream_part(&name)))
    }

    let mut parts = Vec::new();
    let requests = apply_stream(js, config.requests_stream(), &mut parts).await?;
    let events = apply_stream(js, config.events_stream(), &mut parts).await?;
    let history = apply_stream(js, config.history_stream(), &mut parts).await?;
    let dead = apply_stream(js, config.dead_stream(), &mut parts).await?;

    let consumer = config.workers_consumer();
    let before = read_consumer(&requests)
        .await?
        .map(|info| consumer_drift(&info.config, &consumer));
    requests
        .create_consumer(consumer)
        .await
        .map_err(failed(consumer_part()))?;
    parts.push(PartOutcome::new(consumer_part(), before));

    let bucket = config.sessions_bucket();
    let before = read_stream(js, &bucket_stream())
        .await?
        .map(|s| bucket_drift(&s.cached_info().config, &bucket));
    let sessions = js
        .create_or_update_key_value(bucket)
        .await
        .map_err(failed(bucket_part()))?;
    parts.push(PartOutcome::new(bucket_part(), before));

    Ok(Applied {
        layout: Layout {
            requests,
            events,
            history,
            dead,
            sessions,
        },
        parts,
    })
}

/// [`apply`], for callers that only need the layout.
pub async fn ensure(js: &jetstream::Context, config: &LayoutConfig) -> Result<Layout, SetupError> {
    apply(js, config).await.map(|applied| applied.layout)
}
