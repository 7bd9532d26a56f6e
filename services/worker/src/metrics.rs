//! The worker's Prometheus metrics (names fixed by the process contract).
//! Recorded through the `metrics` facade with static names and labels, so
//! the hot path (one increment per chunk) allocates nothing.

use std::time::Duration;

pub const JOBS: &str = "chat_worker_jobs_total";
pub const JOBS_IN_FLIGHT: &str = "chat_worker_jobs_in_flight";
pub const CHUNKS_PUBLISHED: &str = "chat_worker_chunks_published_total";
pub const TIME_TO_FIRST_CHUNK: &str = "chat_worker_time_to_first_chunk_seconds";
pub const CHUNK_PUBLISH: &str = "chat_worker_chunk_publish_seconds";
pub const GENERATION: &str = "chat_worker_generation_seconds";
pub const TOKENS: &str = "chat_worker_tokens_total";

/// How a job ended on this worker: the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Cancelled,
    Failed,
    /// Handed back to the queue (a passing failure, or shutdown).
    Redelivered,
    DeadLettered,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "failed",
            Outcome::Redelivered => "redelivered",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

pub fn job_finished(outcome: Outcome) {
    metrics::counter!(JOBS, "outcome" => outcome.as_str()).increment(1);
}

/// Counts a job in flight for as long as the guard lives.
pub struct InFlight(());

impl InFlight {
    pub fn start() -> Self {
        metrics::gauge!(JOBS_IN_FLIGHT).increment(1.0);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(JOBS_IN_FLIGHT).decrement(1.0);
    }
}

/// The metrics every chunk touches, looked up once per attempt: a lookup by
/// name hashes the key on every call, a few percent of the worker's
/// instructions per chunk.
#[derive(Clone)]
pub struct ChunkMetrics {
    published: metrics::Counter,
    acked: metrics::Histogram,
}

impl ChunkMetrics {
    pub fn new() -> Self {
        Self {
            published: metrics::counter!(CHUNKS_PUBLISHED),
            acked: metrics::histogram!(CHUNK_PUBLISH),
        }
    }

    pub fn published(&self) {
        self.published.increment(1);
    }

    /// A chunk's publish → JetStream ack time.
    pub fn acked(&self, elapsed: Duration) {
        self.acked.record(elapsed.as_secs_f64());
    }
}

impl Default for ChunkMetrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn first_chunk(elapsed: Duration) {
    metrics::histogram!(TIME_TO_FIRST_CHUNK).record(elapsed.as_secs_f64());
}

pub fn generation(elapsed: Duration, backend: &'static str, tokens: u64) {
    metrics::histogram!(GENERATION).record(elapsed.as_secs_f64());
    metrics::counter!(TOKENS, "backend" => backend).increment(tokens);
}
