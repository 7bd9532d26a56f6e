//! Work-queue depth as Prometheus gauges, read from JetStream itself: jobs
//! waiting, jobs delivered and not yet acked, and jobs redelivered. Every
//! worker reports the same consumer, so a dashboard takes `max` across them.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use tokio_util::sync::CancellationToken;

pub const PENDING: &str = "chat_queue_pending_jobs";
pub const ACK_PENDING: &str = "chat_queue_ack_pending_jobs";
pub const REDELIVERED: &str = "chat_queue_redelivered_jobs";

/// How often the consumer's state is read: cheap (one request), and fine
/// grained enough for an alert that looks at minutes.
pub const POLL_EVERY: Duration = Duration::from_secs(5);

/// Reads the `workers` consumer's state every `every` until `stop` fires.
pub fn watch(
    mut consumer: PullConsumer,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match consumer.info().await {
                Ok(info) => {
                    metrics::gauge!(PENDING).set(info.num_pending as f64);
                    metrics::gauge!(ACK_PENDING).set(info.num_ack_pending as f64);
                    metrics::gauge!(REDELIVERED).set(info.num_redelivered as f64);
                }
                Err(e) => tracing::debug!(error = %e, "reading the queue's state"),
            }
        }
    })
}
