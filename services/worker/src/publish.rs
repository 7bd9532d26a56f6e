//! Pipelined event publishing: an event is sent without waiting for its
//! JetStream ack; a separate task awaits the acks in order, at most
//! [`ACK_WINDOW`] outstanding. Waiting for every ack in turn would cap a
//! worker near 8 k chunks/s (FIELD-NOTES.md); a failed ack still fails the
//! attempt, because the publisher reports it on the next publish and on
//! [`EventPublisher::finish`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use protocol::Event;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics;

/// Publishes not yet acked by the server, per attempt.
pub const ACK_WINDOW: usize = 256;

#[derive(Debug, Clone, thiserror::Error)]
#[error("publishing events: {0}")]
pub struct PublishFailed(pub String);

/// Publishes one attempt's events to one session's subject, in order.
pub struct EventPublisher {
    js: jetstream::Context,
    subject: async_nats::Subject,
    acks: mpsc::Sender<(PublishAckFuture, Instant, bool)>,
    failed: Arc<AtomicBool>,
    acker: JoinHandle<Result<(), PublishFailed>>,
}

impl EventPublisher {
    pub fn start(js: jetstream::Context, subject: String) -> Self {
        let (acks, mut pending) = mpsc::channel::<(PublishAckFuture, Instant, bool)>(ACK_WINDOW);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let acker = tokio::spawn(async move {
            while let Some((ack, sent_at, is_chunk)) = pending.recv().await {
                if let Err(e) = ack.await {
                    flag.store(true, Ordering::Release);
                    return Err(PublishFailed(e.to_string()));
                }
                if is_chunk {
                    metrics::chunk_acked(sent_at.elapsed());
                }
            }
            Ok(())
        });
        Self {
            js,
            subject: subject.into(),
            acks,
            failed,
            acker,
        }
    }

    /// Sends an event; waits only when [`ACK_WINDOW`] acks are outstanding.
    pub async fn publish(&mut self, event: &Event) -> Result<(), PublishFailed> {
        if self.failed.load(Ordering::Acquire) {
            return Err(PublishFailed(
                "an earlier publish was not acknowledged".into(),
            ));
        }
        let is_chunk = matches!(event, Event::Chunk { .. });
        let ack = self
            .js
            .send_publish(
                self.subject.clone(),
                PublishMessage::build().payload(event.to_payload()),
            )
            .await
            .map_err(|e| PublishFailed(e.to_string()))?;
        if is_chunk {
            metrics::chunk_published();
        }
        self.acks
            .send((ack, Instant::now(), is_chunk))
            .await
            .map_err(|_| PublishFailed("the ack task stopped".into()))
    }

    /// Stores an attempt's terminal event (`done`, `cancelled`, `error`)
    /// only once every event before it is acknowledged, and waits for its
    /// own ack: a lost chunk then fails the attempt (it is retried with
    /// `restart`) instead of leaving a complete-looking answer with a hole
    /// followed by a second terminal event. `meanwhile` runs while the acks
    /// are awaited and is done before the terminal event is stored.
    pub async fn finish_with(
        self,
        terminal: &Event,
        meanwhile: impl std::future::Future<Output = ()>,
    ) -> Result<(), PublishFailed> {
        let js = self.js.clone();
        let subject = self.subject.clone();
        let (acked, ()) = tokio::join!(self.finish(), meanwhile);
        acked?;
        js.send_publish(
            subject,
            PublishMessage::build().payload(terminal.to_payload()),
        )
        .await
        .map_err(|e| PublishFailed(e.to_string()))?
        .await
        .map_err(|e| PublishFailed(e.to_string()))?;
        Ok(())
    }

    /// Waits for every outstanding ack: `Ok` means every event is stored.
    pub async fn finish(self) -> Result<(), PublishFailed> {
        drop(self.acks);
        match self.acker.await {
            Ok(result) => result,
            Err(e) => Err(PublishFailed(format!("ack task: {e}"))),
        }
    }
}
