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
//! When the connection is lost with acks outstanding, the attempt need not
//! start over: [`EventPublisher`] reads back, once, on the new connection,
//! which of the unacknowledged events the session's subject holds (each
//! payload is unique: it carries its index and its publish time), publishes
//! again the ones it does not, and the attempt goes on where it was. Only a
//! stream that cannot settle it (a later event stored, an earlier one not)
//! fails the attempt.
//!
//! An attempt's first event can be fenced ([`FirstEvent::RightAfter`]): it
//! is stored only right after the session's last event as the attempt's
//! admit step read it (compare-and-set on the session's subject), and
//! nothing is sent behind it until it is acked. Two runs of one message
//! that both believe they are its first attempt (a delivery count that
//! restarted with nats-server) then cannot both stream: the second one's
//! first event is refused, and it reads the stream again. Another
//! message's events stored since (a second question answered beside this
//! one) do not refuse it: see the worker's `siblings` module.
//!
//! Writes that must be stored before the job goes on (a terminal event, a
//! history turn, a dead letter) use [`publish_and_wait`].

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream::Stream};
use bytes::Bytes;
use futures::StreamExt;
use protocol::connect::ConnectionWatch;
use protocol::{stored as stream_reads, subjects, Event, EventKind, MessageId, SessionId};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::chunk_window::ChunkWindow;
use crate::metrics;
use crate::siblings::{self, SessionSubject};

/// Publishes not yet acked by the server, per attempt.
pub const ACK_WINDOW: usize = 256;

/// How long the oldest outstanding publish may wait for its ack before the
/// attempt fails (async-nats's own request timeout).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Lost connections an attempt goes on after; one more fails it.
pub const RESUMES: usize = 3;
/// Read-backs of the unacknowledged events before giving up, when a
/// replica behind the one that gave the subject's last sequence answers.
const READ_BACK_TRIES: usize = 5;
const LAGGING_REPLICA_PAUSE: Duration = Duration::from_millis(50);
/// How long a publisher waits for its lost connection to come back: longer
/// than a paused server (a VM migration, a GC pause) usually stays away.
/// A server paused with the old connection's last publishes in its socket
/// processes them the moment it wakes, long before the new connection has
/// done its handshake and the barrier.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(30);
const RECONNECT_LOOK_EVERY: Duration = Duration::from_millis(50);
/// How long a connection the client reports down may take to be counted
/// as lost.
const LOSS_NOTICE: Duration = Duration::from_secs(2);

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

/// Where an attempt's first event may be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstEvent {
    /// After whatever the session's subject holds: the attempt has stored
    /// an event of its own already (its `restart`, compare-and-set).
    Anywhere,
    /// Only right after this sequence of the session's subject, the last
    /// the admit step read (0: none).
    RightAfter(u64),
}

/// Publishes one attempt's events to one session's subject, in order.
pub struct EventPublisher {
    js: jetstream::Context,
    client: async_nats::Client,
    subject: async_nats::Subject,
    /// `CHAT_EVENTS`, read back after a lost connection.
    stream: Stream,
    /// The attempt's reply subject; subscribed by the first publish.
    reply: async_nats::Subject,
    /// Send time, kind, and the connection's loss count at sending, of each
    /// publish whose ack is outstanding, oldest first; bounded by
    /// [`ACK_WINDOW`].
    sent: mpsc::Sender<Sent>,
    /// Until the first publish: the other end of `sent`.
    unsent: Option<mpsc::Receiver<Sent>>,
    /// The payloads whose acks are outstanding, oldest first.
    unacked: Arc<Mutex<VecDeque<Bytes>>>,
    /// The sequence of the last acknowledged event (at first, the last one
    /// the attempt knows came before its own): a read-back starts after it.
    acked_seq: Arc<AtomicU64>,
    /// The connection's loss count when the current ack task started.
    epoch: u64,
    resumes: usize,
    connection: ConnectionWatch,
    failed: Arc<AtomicBool>,
    acker: Option<JoinHandle<Result<(), PublishFailed>>>,
    metrics: metrics::ChunkMetrics,
    /// The coalescing window, told each chunk's ack latency.
    window: Arc<ChunkWindow>,
    /// Until the first event is stored: where it may be.
    first: FirstEvent,
    /// The first event was refused: the session's subject had moved on.
    moved: bool,
}

impl EventPublisher {
    /// `window` learns each chunk's ack latency: the path's backlog, which
    /// the coalescing window adapts to. `connection`: an ack outstanding
    /// when the connection it was sent on is lost can never come (the
    /// server answers on that connection), so the ack wait ends then rather
    /// than at the ack timeout, and what was stored is read back from
    /// `stream` (`CHAT_EVENTS`), after `after_seq`, the last sequence of
    /// the session's subject the attempt knows before its first event;
    /// `first` says whether that first event must follow it directly.
    pub fn start(
        js: jetstream::Context,
        stream: Stream,
        connection: ConnectionWatch,
        subject: String,
        after_seq: u64,
        first: FirstEvent,
        window: Arc<ChunkWindow>,
    ) -> Self {
        let client = js.client();
        let reply = client.new_inbox().into();
        let (sent, unsent) = mpsc::channel(ACK_WINDOW);
        Self {
            js,
            client,
            stream,
            epoch: connection.losses(),
            connection,
            subject: subject.into(),
            reply,
            sent,
            unsent: Some(unsent),
            unacked: Arc::new(Mutex::new(VecDeque::new())),
            acked_seq: Arc::new(AtomicU64::new(after_seq)),
            resumes: 0,
            failed: Arc::new(AtomicBool::new(false)),
            acker: None,
            metrics: metrics::ChunkMetrics::new(),
            window,
            first,
            moved: false,
        }
    }

    /// Whether nothing of the attempt is stored through this publisher
    /// yet, while its first event is fenced: the sequence it must follow.
    pub fn unstored_first(&self) -> Option<u64> {
        match self.first {
            FirstEvent::RightAfter(seq) => Some(seq),
            FirstEvent::Anywhere => None,
        }
    }

    /// Whether the attempt's first event was refused because the session's
    /// subject held more than the admit step read: nothing is stored, and
    /// the admit step must read again.
    pub fn stream_moved(&self) -> bool {
        self.moved
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
        let acks = Acks {
            replies: acks,
            sent,
            unacked: self.unacked.clone(),
            acked_seq: self.acked_seq.clone(),
            metrics: self.metrics.clone(),
            window: self.window.clone(),
            connection: self.connection.clone(),
        };
        self.acker = Some(tokio::spawn(async move {
            let result = acks.check().await;
            if result.is_err() {
                failed.store(true, Ordering::Release);
            }
            result
        }));
        Ok(())
    }

    /// Sends an event; waits only when [`ACK_WINDOW`] acks are outstanding.
    /// After a lost connection, first settles what the old one left (see
    /// [`EventPublisher::resume`]).
    pub async fn publish(&mut self, event: &Event) -> Result<(), PublishFailed> {
        let (payload, is_chunk) = (event.to_payload(), event.kind() == EventKind::Chunk);
        loop {
            if self.failed.load(Ordering::Acquire) || self.connection_lost() {
                self.resume().await?;
            }
            if let FirstEvent::RightAfter(after) = self.first {
                let message = event.message_id();
                return self.publish_first(payload, is_chunk, after, message).await;
            }
            if self.send(payload.clone(), is_chunk).await? {
                return Ok(());
            }
            // The ack task failed before this event was sent: settle first.
            self.failed.store(true, Ordering::Release);
        }
    }

    /// The attempt's first event, stored only right after `after` (or
    /// after other messages' events stored since: see [`crate::siblings`]),
    /// and acked before anything is sent behind it (a refused first event
    /// with later ones stored would be a hole). A lost connection before
    /// its ack fails the attempt: whether it was stored is for the next
    /// attempt's admit step to read.
    async fn publish_first(
        &mut self,
        payload: Bytes,
        is_chunk: bool,
        after: u64,
        message: Option<MessageId>,
    ) -> Result<(), PublishFailed> {
        let session = SessionSubject {
            js: &self.js,
            events: &self.stream,
            subject: &self.subject,
            message,
        };
        let stored = session.publish_right_after(payload, after);
        let acked = tokio::select! {
            acked = stored => acked,
            _ = self.connection.lost_since(self.epoch) => {
                return Err(PublishFailed(
                    "the NATS connection was lost before the first event's ack came".into(),
                ))
            }
        };
        match acked {
            Ok((ack, sent_at)) => {
                self.acked_seq.store(ack.sequence, Ordering::Release);
                self.first = FirstEvent::Anywhere;
                if is_chunk {
                    let latency = sent_at.elapsed();
                    self.metrics.published();
                    self.metrics.acked(latency);
                    self.window.observe_ack(latency);
                }
                Ok(())
            }
            Err(e) if siblings::is_moved(&e) => {
                self.moved = true;
                Err(PublishFailed(format!(
                    "the session's stream moved on after {after} before the attempt's first event"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the connection was lost since the current ack task started
    /// or is down now: nothing is sent then. A publish sent while the
    /// client reconnects would be kept by it and sent on the new
    /// connection, stored after events of the old one that the read-back
    /// finds missing and sends again: out of order.
    fn connection_lost(&self) -> bool {
        self.connection.losses() != self.epoch
            || self.client.connection_state() != async_nats::connection::State::Connected
    }

    /// Sends one event; `false` when the ack task had ended (it failed)
    /// and nothing was sent.
    async fn send(&mut self, payload: Bytes, is_chunk: bool) -> Result<bool, PublishFailed> {
        self.start_acker().await?;
        // Recorded before the publish, so the ack task never sees an ack
        // it has no record for; the loss count read before sending: a loss
        // after this point fails the ack wait.
        let losses = self.connection.losses();
        if self
            .sent
            .send((Instant::now(), is_chunk, losses))
            .await
            .is_err()
        {
            return Ok(false);
        }
        if let Ok(mut unacked) = self.unacked.lock() {
            unacked.push_back(payload.clone());
        }
        self.client
            .publish_with_reply(self.subject.clone(), self.reply.clone(), payload)
            .await
            .map_err(|e| PublishFailed(e.to_string()))?;
        if is_chunk {
            self.metrics.published();
        }
        Ok(true)
    }

    /// The ack task's failure, once it has ended (at once when it failed;
    /// within [`ACK_TIMEOUT`] after a lost connection, which ends its wait).
    async fn ack_failure(&mut self) -> PublishFailed {
        match self.acker.take() {
            Some(acker) => match acker.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => PublishFailed("the NATS connection was lost".into()),
                Err(e) => PublishFailed(format!("ack task: {e}")),
            },
            None => PublishFailed("the NATS connection was lost".into()),
        }
    }

    /// After a failed ack wait or a lost connection: if the connection was
    /// lost since the ack task started (at most [`RESUMES`] times), waits
    /// for the new one, reads back once which unacknowledged events the
    /// subject holds, and sends again those it does not, with a new ack
    /// task. `Err` when the failure was not a lost connection, or the
    /// stream cannot settle it (then the attempt starts over).
    async fn resume(&mut self) -> Result<(), PublishFailed> {
        // Closing `sent` lets an ack task that has every ack end.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.sent, closed));
        let failure = self.ack_failure().await;
        if self.connection.losses() == self.epoch
            && self.client.connection_state() != async_nats::connection::State::Connected
        {
            // The client saw its connection go; the loss is being counted.
            let lost = self.connection.lost_since(self.epoch);
            let _ = tokio::time::timeout(LOSS_NOTICE, lost).await;
        }
        if self.connection.losses() == self.epoch || self.resumes >= RESUMES {
            return Err(failure);
        }
        self.resumes += 1;
        self.reconnected().await?;
        self.epoch = self.connection.losses();
        let unacked: Vec<Bytes> = match self.unacked.lock() {
            Ok(mut unacked) => unacked.drain(..).collect(),
            Err(_) => return Err(failure),
        };
        let after = self.acked_seq.load(Ordering::Acquire);
        let missing = self.read_back(&unacked, after).await?;
        tracing::info!(
            unacked = unacked.len(),
            stored = unacked.len() - missing.len(),
            "the NATS connection was lost with acks outstanding; going on after what was stored"
        );
        let (sent, unsent) = mpsc::channel(ACK_WINDOW);
        self.sent = sent;
        self.unsent = Some(unsent);
        self.reply = self.client.new_inbox().into();
        self.failed.store(false, Ordering::Release);
        for payload in missing {
            let is_chunk = serde_json::from_slice::<Event>(&payload)
                .is_ok_and(|e| e.kind() == EventKind::Chunk);
            if !self.send(payload, is_chunk).await? {
                return Err(PublishFailed("the ack task stopped".into()));
            }
        }
        Ok(())
    }

    /// Waits (up to [`RECONNECT_PATIENCE`]) for the client to be connected
    /// again, then for the stream to have taken everything this client
    /// sent before: a publish the server refuses (a compare-and-set no
    /// subject can meet) is answered only after the stream processed the
    /// ones sent before it on the same connection.
    async fn reconnected(&self) -> Result<(), PublishFailed> {
        let started = Instant::now();
        while self.client.connection_state() != async_nats::connection::State::Connected {
            if started.elapsed() > RECONNECT_PATIENCE {
                return Err(PublishFailed(
                    "the NATS connection did not come back".into(),
                ));
            }
            tokio::time::sleep(RECONNECT_LOOK_EVERY).await;
        }
        let barrier = PublishMessage::build()
            .payload(Bytes::new())
            .expected_last_subject_sequence(u64::MAX);
        let answered = async {
            self.js
                .send_publish(self.subject.to_string(), barrier)
                .await?
                .await
        };
        match answered.await {
            Err(e) if siblings::is_moved(&e) => Ok(()),
            Ok(_) => Err(PublishFailed(
                "the stream stored a barrier it must refuse".into(),
            )),
            Err(e) => Err(PublishFailed(format!(
                "waiting for the stream after a lost connection: {e}"
            ))),
        }
    }

    /// The payloads of `unacked` (oldest first) the subject does not hold
    /// after `after`: a suffix of them, or `Err` when the stored ones are
    /// not a prefix (a hole) or the subject cannot be read.
    async fn read_back(&self, unacked: &[Bytes], after: u64) -> Result<Vec<Bytes>, PublishFailed> {
        if unacked.is_empty() {
            return Ok(Vec::new());
        }
        let failed = |e: String| PublishFailed(format!("reading back unacknowledged events: {e}"));
        for _ in 0..READ_BACK_TRIES {
            let last = self
                .connection
                .retry_when_lost(|| stream_reads::last_seq(&self.stream, self.subject.as_str()))
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(|e| failed(e.to_string()))?;
            let read = stream_reads::read_range(
                &self.client,
                &self.stream,
                self.subject.as_str(),
                after + 1,
                last,
                // At most the window's events of this attempt, and what
                // other messages of the session stored meanwhile.
                usize::MAX,
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
            if !stream_reads::reaches(&read, after + 1, last) {
                tokio::time::sleep(LAGGING_REPLICA_PAUSE).await;
                continue;
            }
            let held: HashSet<&Bytes> = read.iter().map(|s| &s.payload).collect();
            return missing_suffix(unacked, &held)
                .ok_or_else(|| failed("a later event is stored and an earlier one is not".into()));
        }
        Err(failed(format!(
            "replicas kept disagreeing in {READ_BACK_TRIES} reads"
        )))
    }

    /// Publishes whose ack has not come back yet.
    pub fn outstanding(&self) -> usize {
        ACK_WINDOW - self.sent.capacity()
    }

    /// Waits for every outstanding ack: `Ok` means every event is stored.
    /// An attempt's terminal event is published only after this, so a lost
    /// chunk fails the attempt (it is retried with `restart`) instead of
    /// leaving a complete-looking answer with a hole; after a lost
    /// connection, the events it did not store are sent again first.
    pub async fn finish(mut self) -> Result<(), PublishFailed> {
        loop {
            let (closed, _) = mpsc::channel(1);
            drop(std::mem::replace(&mut self.sent, closed));
            let result = match self.acker.take() {
                None => Ok(()),
                Some(acker) => match acker.await {
                    Ok(result) => result,
                    Err(e) => Err(PublishFailed(format!("ack task: {e}"))),
                },
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.acker = Some(tokio::spawn(async move { Err(e) }));
                    self.resume().await?;
                }
            }
        }
    }
}

/// The payloads of `unacked` (oldest first) missing from `held`, if the
/// held ones are a prefix of `unacked`: JetStream stores one connection's
/// publishes in order, so a lost connection leaves a prefix stored.
fn missing_suffix(unacked: &[Bytes], held: &HashSet<&Bytes>) -> Option<Vec<Bytes>> {
    let stored = unacked.iter().take_while(|p| held.contains(p)).count();
    let rest = &unacked[stored..];
    if rest.iter().any(|p| held.contains(p)) {
        return None;
    }
    Some(rest.to_vec())
}

/// One ack task's state: pairs each publish in `sent` with the next reply
/// on the attempt's subscription, in order, until the publisher is
/// finished and every publish is acked; the first failure ends it.
struct Acks {
    replies: async_nats::Subscriber,
    sent: mpsc::Receiver<Sent>,
    unacked: Arc<Mutex<VecDeque<Bytes>>>,
    acked_seq: Arc<AtomicU64>,
    metrics: metrics::ChunkMetrics,
    window: Arc<ChunkWindow>,
    connection: ConnectionWatch,
}

impl Acks {
    async fn check(mut self) -> Result<(), PublishFailed> {
        while let Some((sent_at, is_chunk, losses)) = self.sent.recv().await {
            let next = tokio::select! {
                next = tokio::time::timeout(ACK_TIMEOUT, self.replies.next()) => next,
                _ = self.connection.lost_since(losses) => {
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
            let seq = stored(&reply.payload)?;
            self.acked_seq.store(seq, Ordering::Release);
            if let Ok(mut unacked) = self.unacked.lock() {
                unacked.pop_front();
            }
            if is_chunk {
                let latency = sent_at.elapsed();
                self.metrics.acked(latency);
                self.window.observe_ack(latency);
            }
        }
        Ok(())
    }
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

/// The stored message's sequence when `payload` is its ack. Anything else
/// (an API error, the empty reply of "no responders", garbage) is a failure.
fn stored(payload: &[u8]) -> Result<u64, PublishFailed> {
    match serde_json::from_slice::<PublishReply>(payload) {
        Ok(PublishReply {
            error: Some(error), ..
        }) => Err(PublishFailed(format!(
            "JetStream refused the event ({}): {}",
            error.code, error.description
        ))),
        Ok(PublishReply { seq: Some(seq), .. }) => Ok(seq),
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
    fn after_a_lost_connection_only_an_unstored_suffix_is_sent_again() {
        let sent: Vec<Bytes> = ["a", "b", "c", "d"].map(Bytes::from).to_vec();
        let held =
            |xs: &[&'static str]| -> Vec<Bytes> { xs.iter().map(|x| Bytes::from(*x)).collect() };
        let check = |stored: &[&'static str]| {
            let stored = held(stored);
            missing_suffix(&sent, &stored.iter().collect())
        };
        assert_eq!(check(&["a", "b"]), Some(held(&["c", "d"])));
        assert_eq!(check(&[]), Some(sent.clone()));
        assert_eq!(check(&["a", "b", "c", "d", "other"]), Some(vec![]));
        // A hole: the stream cannot settle it.
        assert_eq!(check(&["a", "c"]), None);
        assert_eq!(check(&["d"]), None);
    }

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
