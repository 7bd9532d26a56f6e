//! Pipelined event publishing: an event is sent without waiting for its
//! JetStream ack; a separate task awaits the acks in order, at most
//! [`ACK_WINDOW`] outstanding. Waiting for every ack in turn would cap a
//! worker near 8 k chunks/s (one JetStream round trip, ~115 µs, per chunk;
//! pipelined, one connection stores well over 100 k messages/s); a failed
//! ack still fails the attempt, because the publisher reports it on the next
//! publish and on [`EventPublisher::finish`].
//!
//! The acks of one attempt all come back to one reply subject of its own,
//! subscribed once per attempt, instead of a new inbox per publish (what
//! `jetstream::Context::send_publish` does): per chunk that saves the worker
//! an inbox name, a request-map entry and an untagged JSON parse, and saves
//! nats-server a subject-cache entry per ack (a cache it otherwise keeps
//! sweeping). JetStream answers one connection's publishes to one stream in
//! the order it stored them, so the n-th reply is the n-th event's ack; the
//! attempt counts them, and any reply that is not a stored ack (an API
//! error, no responders) or one missing for [`ACK_TIMEOUT`] fails it.
//!
//! Writes that must be stored before the job goes on (a terminal event, a
//! history turn, a dead letter) use [`publish_and_wait`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use futures::StreamExt;
use protocol::connect::ConnectionWatch;
use protocol::{subjects, Event, EventKind, MessageId, SessionId};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::chunk_window::ChunkWindow;
use crate::metrics;

/// Publishes not yet acked by the server, per attempt.
pub const ACK_WINDOW: usize = 256;

/// How long the oldest outstanding publish may wait for its ack before the
/// attempt fails (async-nats's own request timeout).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

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
pub fn once_per_message(
    payload: bytes::Bytes,
    session: SessionId,
    message: MessageId,
) -> PublishMessage {
    PublishMessage::build()
        .payload(payload)
        .message_id(subjects::dedup_id(session, message))
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

/// A publish whose ack is outstanding: when it was sent, whether it is a
/// chunk, and the connection's loss count when it was sent.
type Sent = (Instant, bool, u64);

/// Publishes one attempt's events to one session's subject, in order.
pub struct EventPublisher {
    client: async_nats::Client,
    subject: async_nats::Subject,
    /// The attempt's reply subject; subscribed by the first publish.
    reply: async_nats::Subject,
    /// Send time, kind, and the connection's loss count at sending, of each
    /// publish whose ack is outstanding, oldest first; bounded by
    /// [`ACK_WINDOW`].
    sent: mpsc::Sender<Sent>,
    /// Until the first publish: the other end of `sent`.
    unsent: Option<mpsc::Receiver<Sent>>,
    connection: ConnectionWatch,
    failed: Arc<AtomicBool>,
    acker: Option<JoinHandle<Result<(), PublishFailed>>>,
    metrics: metrics::ChunkMetrics,
    /// The coalescing window, told each chunk's ack latency.
    window: Arc<ChunkWindow>,
}

impl EventPublisher {
    /// `window` learns each chunk's ack latency: the path's backlog, which
    /// the coalescing window adapts to. `connection`: an ack outstanding
    /// when the connection it was sent on is lost can never come (the
    /// server answers on that connection), so the attempt fails then rather
    /// than at the ack timeout: the job goes back to the queue seconds
    /// sooner after a nats-server restart.
    pub fn start(
        js: jetstream::Context,
        connection: ConnectionWatch,
        subject: String,
        window: Arc<ChunkWindow>,
    ) -> Self {
        let client = js.client();
        let reply = client.new_inbox().into();
        let (sent, unsent) = mpsc::channel(ACK_WINDOW);
        Self {
            client,
            connection,
            subject: subject.into(),
            reply,
            sent,
            unsent: Some(unsent),
            failed: Arc::new(AtomicBool::new(false)),
            acker: None,
            metrics: metrics::ChunkMetrics::new(),
            window,
        }
    }

    /// Subscribes to the attempt's reply subject and starts the task that
    /// checks the acks. The subscription is sent before any publish on the
    /// same connection, so the server has it when the first ack leaves.
    async fn start_acker(&mut self) -> Result<(), PublishFailed> {
        let Some(sent) = self.unsent.take() else {
            return Ok(());
        };
        let acks = self
            .client
            .subscribe(self.reply.clone())
            .await
            .map_err(|e| PublishFailed(format!("subscribing to acks: {e}")))?;
        let failed = self.failed.clone();
        let metrics = self.metrics.clone();
        let window = self.window.clone();
        let connection = self.connection.clone();
        self.acker = Some(tokio::spawn(async move {
            let result = check_acks(acks, sent, metrics, window, connection).await;
            if result.is_err() {
                failed.store(true, Ordering::Release);
            }
            result
        }));
        Ok(())
    }

    /// Sends an event; waits only when [`ACK_WINDOW`] acks are outstanding.
    pub async fn publish(&mut self, event: &Event) -> Result<(), PublishFailed> {
        if self.failed.load(Ordering::Acquire) {
            return Err(PublishFailed(
                "an earlier publish was not acknowledged".into(),
            ));
        }
        self.start_acker().await?;
        let is_chunk = event.kind() == EventKind::Chunk;
        // Recorded before the publish, so the ack task never sees an ack
        // it has no record for; the loss count read before sending: a loss
        // after this point fails the ack wait.
        let losses = self.connection.losses();
        self.sent
            .send((Instant::now(), is_chunk, losses))
            .await
            .map_err(|_| PublishFailed("the ack task stopped".into()))?;
        self.client
            .publish_with_reply(self.subject.clone(), self.reply.clone(), event.to_payload())
            .await
            .map_err(|e| PublishFailed(e.to_string()))?;
        if is_chunk {
            self.metrics.published();
        }
        Ok(())
    }

    /// Publishes whose ack has not come back yet.
    pub fn outstanding(&self) -> usize {
        ACK_WINDOW - self.sent.capacity()
    }

    /// Waits for every outstanding ack: `Ok` means every event is stored.
    /// An attempt's terminal event is published only after this, so a lost
    /// chunk fails the attempt (it is retried with `restart`) instead of
    /// leaving a complete-looking answer with a hole.
    pub async fn finish(self) -> Result<(), PublishFailed> {
        drop(self.sent);
        match self.acker {
            None => Ok(()),
            Some(acker) => match acker.await {
                Ok(result) => result,
                Err(e) => Err(PublishFailed(format!("ack task: {e}"))),
            },
        }
    }
}

/// Pairs each publish in `sent` with the next reply on the attempt's
/// subscription, in order, until the publisher is finished and every
/// publish is acked; the first failure ends it.
async fn check_acks(
    mut acks: async_nats::Subscriber,
    mut sent: mpsc::Receiver<Sent>,
    metrics: metrics::ChunkMetrics,
    window: Arc<ChunkWindow>,
    connection: ConnectionWatch,
) -> Result<(), PublishFailed> {
    while let Some((sent_at, is_chunk, losses)) = sent.recv().await {
        let next = tokio::select! {
            next = tokio::time::timeout(ACK_TIMEOUT, acks.next()) => next,
            _ = connection.lost_since(losses) => {
                return Err(PublishFailed(
                    "the NATS connection was lost before the ack came".into(),
                ))
            }
        };
        let reply = match next {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(PublishFailed("the ack subscription ended".into())),
            Err(_) => return Err(PublishFailed(format!("no ack within {ACK_TIMEOUT:?}"))),
        };
        stored(&reply.payload)?;
        if is_chunk {
            let latency = sent_at.elapsed();
            metrics.acked(latency);
            window.observe_ack(latency);
        }
    }
    Ok(())
}

/// JetStream's reply to a publish: a stored message's sequence, or an error.
#[derive(Deserialize)]
struct PublishReply {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    error: Option<PublishReplyError>,
}

#[derive(Deserialize)]
struct PublishReplyError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    description: String,
}

/// `Ok` when `payload` is the ack of a stored message. Anything else (an
/// API error, the empty reply of "no responders", garbage) is a failure.
fn stored(payload: &[u8]) -> Result<(), PublishFailed> {
    match serde_json::from_slice::<PublishReply>(payload) {
        Ok(PublishReply {
            error: Some(error), ..
        }) => Err(PublishFailed(format!(
            "JetStream refused the event ({}): {}",
            error.code, error.description
        ))),
        Ok(PublishReply { seq: Some(_), .. }) => Ok(()),
        Ok(PublishReply { seq: None, .. }) => {
            Err(PublishFailed("a publish reply without a sequence".into()))
        }
        Err(_) if payload.is_empty() => Err(PublishFailed(
            "no stream answered the publish (no responders)".into(),
        )),
        Err(e) => Err(PublishFailed(format!("an unreadable publish reply: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_stored_ack_counts_as_stored() {
        assert!(stored(br#"{"stream":"CHAT_EVENTS","seq":42}"#).is_ok());
        assert!(stored(br#"{"stream":"CHAT_EVENTS","seq":42,"duplicate":true}"#).is_ok());
        let refused = stored(
            br#"{"error":{"code":503,"err_code":10077,"description":"resource limits exceeded"}}"#,
        )
        .unwrap_err();
        assert!(refused.0.contains("resource limits"), "{refused}");
        assert!(stored(b"").unwrap_err().0.contains("no responders"));
        assert!(stored(br#"{"stream":"CHAT_EVENTS"}"#).is_err());
        assert!(stored(b"+OK").is_err());
    }
}
