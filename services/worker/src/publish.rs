//! Pipelined event publishing: an event is sent without waiting for its
//! JetStream ack; a separate task awaits the acks in order, at most
//! [`ACK_WINDOW`] outstanding. Waiting for every ack in turn would cap a
//! worker near 8 k chunks/s (one JetStream round trip, ~115 µs, per chunk;
//! pipelined, one connection stores well over 100 k messages/s); a failed
//! ack still fails the attempt, because the publisher reports it on the next
//! publish and on [`EventPublisher::finish`].
//!
//! Writes that must be stored before the job goes on (a terminal event, a
//! history turn, a dead letter) use [`publish_and_wait`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use protocol::connect::ConnectionWatch;
use protocol::{subjects, Event, EventKind, MessageId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics;

/// Publishes not yet acked by the server, per attempt.
pub const ACK_WINDOW: usize = 256;

#[derive(Debug, Clone, thiserror::Error)]
#[error("publishing events: {0}")]
pub struct PublishFailed(pub String);

impl From<jetstream::context::PublishError> for PublishFailed {
    fn from(e: jetstream::context::PublishError) -> Self {
        Self(e.to_string())
    }
}

impl From<serde_json::Error> for PublishFailed {
    fn from(e: serde_json::Error) -> Self {
        Self(e.to_string())
    }
}

/// A message JetStream stores once per chat message (within the dedup
/// window), however often a repeated attempt sends it.
pub fn once_per_message(payload: bytes::Bytes, message: MessageId) -> PublishMessage {
    PublishMessage::build()
        .payload(payload)
        .message_id(subjects::dedup_id(message))
}

/// Publishes one message and waits until JetStream has stored it.
pub async fn publish_and_wait(
    js: &jetstream::Context,
    subject: String,
    message: PublishMessage,
) -> Result<(), PublishFailed> {
    js.send_publish(subject, message).await?.await?;
    Ok(())
}

/// Publishes one attempt's events to one session's subject, in order.
pub struct EventPublisher {
    js: jetstream::Context,
    subject: async_nats::Subject,
    connection: ConnectionWatch,
    acks: mpsc::Sender<(PublishAckFuture, Instant, bool, u64)>,
    failed: Arc<AtomicBool>,
    acker: JoinHandle<Result<(), PublishFailed>>,
}

impl EventPublisher {
    /// `connection`: an ack outstanding when the connection it was sent on
    /// is lost can never come (the server answers on that connection), so
    /// the attempt fails then rather than at the ack timeout: the job goes
    /// back to the queue seconds sooner after a nats-server restart.
    pub fn start(js: jetstream::Context, connection: ConnectionWatch, subject: String) -> Self {
        let (acks, mut pending) =
            mpsc::channel::<(PublishAckFuture, Instant, bool, u64)>(ACK_WINDOW);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let watch = connection.clone();
        let acker = tokio::spawn(async move {
            while let Some((ack, sent_at, is_chunk, losses)) = pending.recv().await {
                let acked = tokio::select! {
                    acked = ack => acked.map_err(PublishFailed::from),
                    _ = connection.lost_since(losses) => Err(PublishFailed(
                        "the NATS connection was lost before the ack came".into(),
                    )),
                };
                if let Err(e) = acked {
                    flag.store(true, Ordering::Release);
                    return Err(e);
                }
                if is_chunk {
                    metrics::chunk_acked(sent_at.elapsed());
                }
            }
            Ok(())
        });
        Self {
            js,
            connection: watch,
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
        let is_chunk = event.kind() == EventKind::Chunk;
        // Read before sending: a loss after this point fails the ack wait.
        let losses = self.connection.losses();
        let ack = self
            .js
            .send_publish(
                self.subject.clone(),
                PublishMessage::build().payload(event.to_payload()),
            )
            .await?;
        if is_chunk {
            metrics::chunk_published();
        }
        self.acks
            .send((ack, Instant::now(), is_chunk, losses))
            .await
            .map_err(|_| PublishFailed("the ack task stopped".into()))
    }

    /// Waits for every outstanding ack: `Ok` means every event is stored.
    /// An attempt's terminal event is published only after this, so a lost
    /// chunk fails the attempt (it is retried with `restart`) instead of
    /// leaving a complete-looking answer with a hole.
    pub async fn finish(self) -> Result<(), PublishFailed> {
        drop(self.acks);
        match self.acker.await {
            Ok(result) => result,
            Err(e) => Err(PublishFailed(format!("ack task: {e}"))),
        }
    }
}
