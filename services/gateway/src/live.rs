//! Live delivery: one core subscription per session on this gateway, to the
//! republished `chat.live.<session>`, held while at least one socket of the
//! session is attached, and fanned out to those sockets through a bounded
//! broadcast. The frame is built once per event (sequence spliced in, no
//! JSON parse) and shared by every socket; the fan-out never waits for a
//! socket. The broadcast ring is small (it is allocated for every attached
//! session, busy or idle); a socket that falls behind it takes what it
//! missed from the session's recent events, a buffer of up to
//! `--recent-events` events that grows only with use, and from the stream
//! beyond that (see `socket`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use protocol::connect::ConnectionWatch;
use protocol::{subjects, EventKind, SessionId};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// One event of a session as it arrived live.
#[derive(Debug)]
pub struct LiveEvent {
    /// Its sequence in `CHAT_EVENTS`.
    pub seq: u64,
    /// The previous sequence on the session's subject (0 for the first): a
    /// socket that has not sent that one has a gap to fill first.
    pub prev: u64,
    /// The client frame, `seq` included.
    pub frame: Utf8Bytes,
    /// The frame's `type` (`None` for one this gateway does not know), for
    /// metrics.
    pub kind: Option<EventKind>,
}

/// Slots of a session's broadcast ring: enough to hand over a burst
/// between two polls of a socket, small enough for ten thousand idle
/// sessions.
const RING: usize = 32;

/// The last events of a session, for sockets that fell behind the ring.
type Recent = Arc<Mutex<VecDeque<Arc<LiveEvent>>>>;

struct Feed {
    sender: broadcast::Sender<Arc<LiveEvent>>,
    /// Fires when the session is revoked: its sockets close.
    revoked: CancellationToken,
    recent: Recent,
    sockets: usize,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
pub struct LiveHub {
    client: async_nats::Client,
    /// A subscription's confirming round trip is asked again when the
    /// connection it went out on is lost (the subscription itself is sent
    /// again by the client as it reconnects).
    connection: ConnectionWatch,
    feeds: Arc<Mutex<HashMap<SessionId, Feed>>>,
    /// Live events each attached session keeps for its sockets that fell
    /// behind the ring (`--recent-events`); the ring is no larger.
    recent_events: usize,
    /// Test hook: drop every n-th live message before fan-out. 0 = never.
    drop_every: u64,
    /// Sockets one session may have attached here (`--max-sockets-per-session`).
    /// A session's sockets all reach the same gateway (Nginx hashes on the
    /// session), so this bounds a session's sockets, and one stolen token
    /// cannot hold thousands of connections.
    max_sockets: usize,
}

/// Why a socket could not attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("this session already has {0} sockets open")]
    TooManySockets(usize),
    #[error(transparent)]
    Nats(#[from] async_nats::Error),
}

/// A socket's place in a session's feed; dropping the last one unsubscribes.
pub struct Attachment {
    pub receiver: broadcast::Receiver<Arc<LiveEvent>>,
    /// Fires when the session is revoked (`DELETE /api/sessions/{id}`).
    pub revoked: CancellationToken,
    recent: Recent,
    hub: LiveHub,
    session: SessionId,
}

impl Attachment {
    /// The session's recent events after `seq`, oldest first. The first
    /// one's `prev` tells whether they reach back to `seq`; if not, the
    /// caller fills the rest from the stream.
    pub fn recent_after(&self, seq: u64) -> Vec<Arc<LiveEvent>> {
        let Ok(recent) = self.recent.lock() else {
            return Vec::new();
        };
        events_after(&recent, seq)
    }
}

fn events_after(recent: &VecDeque<Arc<LiveEvent>>, seq: u64) -> Vec<Arc<LiveEvent>> {
    let start = recent.partition_point(|e| e.seq <= seq);
    recent.range(start..).cloned().collect()
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let Ok(mut feeds) = self.hub.feeds.lock() else {
            return;
        };
        if let Some(feed) = feeds.get_mut(&self.session) {
            feed.sockets = feed.sockets.saturating_sub(1);
            if feed.sockets == 0 {
                if let Some(feed) = feeds.remove(&self.session) {
                    // Aborting drops the subscriber, which unsubscribes.
                    feed.task.abort();
                }
                metrics::sessions_attached(feeds.len());
            }
        }
    }
}

impl LiveHub {
    /// Closes every socket of `session` on this gateway (it was revoked).
    pub fn revoke(&self, session: SessionId) {
        if let Ok(feeds) = self.feeds.lock() {
            if let Some(feed) = feeds.get(&session) {
                feed.revoked.cancel();
            }
        }
    }

    /// Listens for revocations from every gateway until the connection ends.
    pub async fn listen_for_revocations(
        &self,
    ) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
        let mut revocations = self.client.subscribe(subjects::REVOKED_ALL).await?;
        let hub = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(message) = revocations.next().await {
                if let Some(session) = subjects::session_of_revoked(&message.subject) {
                    hub.revoke(session);
                }
            }
        }))
    }
}

fn poisoned() -> AttachError {
    AttachError::Nats("live feeds lock poisoned".into())
}

impl LiveHub {
    pub fn new(
        client: async_nats::Client,
        connection: ConnectionWatch,
        recent_events: usize,
        drop_every: u64,
        max_sockets: usize,
    ) -> Self {
        Self {
            client,
            connection,
            feeds: Arc::default(),
            recent_events: recent_events.max(1),
            drop_every,
            max_sockets: max_sockets.max(1),
        }
    }

    /// Joins the session's feed if it has one here.
    fn join(&self, session: SessionId) -> Result<Option<Attachment>, AttachError> {
        let mut feeds = self.feeds.lock().map_err(|_| poisoned())?;
        match feeds.get_mut(&session) {
            Some(feed) => self.join_feed(feed, session).map(Some),
            None => Ok(None),
        }
    }

    fn join_feed(&self, feed: &mut Feed, session: SessionId) -> Result<Attachment, AttachError> {
        if feed.sockets >= self.max_sockets {
            return Err(AttachError::TooManySockets(feed.sockets));
        }
        feed.sockets += 1;
        Ok(Attachment {
            receiver: feed.sender.subscribe(),
            revoked: feed.revoked.clone(),
            recent: feed.recent.clone(),
            hub: self.clone(),
            session,
        })
    }

    /// Attaches a socket to the session's live events. When this returns the
    /// server has the subscription, so any event stored from now on arrives:
    /// a replay read afterwards leaves no hole.
    pub async fn attach(&self, session: SessionId) -> Result<Attachment, AttachError> {
        if let Some(attachment) = self.join(session)? {
            return Ok(attachment);
        }
        let subscriber = self
            .client
            .subscribe(subjects::live(session))
            .await
            .map_err(async_nats::Error::from)?;
        // The flush is a round trip: once it returns, the server has
        // processed the SUB. A connection lost meanwhile takes the flush's
        // answer with it; the reconnect sends every subscription again
        // before anything else, so a flush on the new connection confirms.
        self.connection
            .retry_when_lost(|| self.client.flush())
            .await
            .map_err(async_nats::Error::from)?
            .map_err(async_nats::Error::from)?;
        let mut feeds = self.feeds.lock().map_err(|_| poisoned())?;
        if let Some(feed) = feeds.get_mut(&session) {
            // Another socket of the session got there first: join its feed
            // (ours unsubscribes as it drops).
            return self.join_feed(feed, session);
        }
        let (sender, receiver) = broadcast::channel(RING.min(self.recent_events));
        let revoked = CancellationToken::new();
        let recent = Recent::default();
        let task = tokio::spawn(forward(
            subscriber,
            sender.clone(),
            recent.clone(),
            self.recent_events,
            self.drop_every,
        ));
        feeds.insert(
            session,
            Feed {
                sender,
                revoked: revoked.clone(),
                recent: recent.clone(),
                sockets: 1,
                task,
            },
        );
        metrics::sessions_attached(feeds.len());
        Ok(Attachment {
            receiver,
            revoked,
            recent,
            hub: self.clone(),
            session,
        })
    }
}

/// The `type` of a stored event, read from its first bytes: the event's tag
/// is serialised first, so no parse is needed.
pub fn event_kind(payload: &[u8]) -> Option<EventKind> {
    let rest = payload.strip_prefix(b"{\"type\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    EventKind::parse(std::str::from_utf8(&rest[..end]).ok()?)
}

/// The event's sequence and its subject's previous one, from the headers the
/// republish adds, in one pass over them: two lookups by name would each
/// parse the name and hash it (SipHash), which showed per chunk.
fn republished_sequences(message: &async_nats::Message) -> (Option<u64>, Option<u64>) {
    let (mut seq, mut prev) = (None, None);
    let Some(headers) = &message.headers else {
        return (seq, prev);
    };
    for (name, values) in headers.iter() {
        let name: &[u8] = name.as_ref();
        let slot = if name == subjects::HEADER_SEQUENCE.as_bytes() {
            &mut seq
        } else if name == subjects::HEADER_LAST_SEQUENCE.as_bytes() {
            &mut prev
        } else {
            continue;
        };
        *slot = values.first().and_then(|v| v.as_str().parse().ok());
    }
    (seq, prev)
}

/// The per-event hot path: headers, splice, remember, one broadcast send.
/// No KV, no parse, nothing awaited but the next message.
async fn forward(
    mut subscriber: async_nats::Subscriber,
    sender: broadcast::Sender<Arc<LiveEvent>>,
    recent: Recent,
    keep: usize,
    drop_every: u64,
) {
    let mut received = 0u64;
    while let Some(message) = subscriber.next().await {
        received += 1;
        if drop_every > 0 && received.is_multiple_of(drop_every) {
            continue;
        }
        let (Some(seq), prev) = republished_sequences(&message) else {
            tracing::debug!(subject = %message.subject, "live message without a sequence; ignored");
            continue;
        };
        let prev = prev.unwrap_or(0);
        let Some(frame) = protocol::frames::with_seq(&message.payload, seq) else {
            tracing::debug!(seq, "live payload is not a JSON object; ignored");
            continue;
        };
        let kind = event_kind(&message.payload);
        let event = Arc::new(LiveEvent {
            seq,
            prev,
            frame: frame.into(),
            kind,
        });
        if let Ok(mut recent) = recent.lock() {
            if recent.len() >= keep {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // No receiver at this instant is fine: sockets come and go.
        let _ = sender.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Event, MessageId};

    #[test]
    fn recent_events_after_a_sequence_come_in_order() {
        let recent: VecDeque<Arc<LiveEvent>> = [(7, 3), (9, 7), (12, 9)]
            .into_iter()
            .map(|(seq, prev)| {
                Arc::new(LiveEvent {
                    seq,
                    prev,
                    frame: Utf8Bytes::from_static("{}"),
                    kind: Some(EventKind::Chunk),
                })
            })
            .collect();
        let seqs = |after| {
            events_after(&recent, after)
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(0), vec![7, 9, 12]);
        assert_eq!(seqs(7), vec![9, 12]);
        assert_eq!(seqs(8), vec![9, 12]);
        assert_eq!(seqs(12), Vec::<u64>::new());
    }

    #[test]
    fn republished_sequences_come_from_their_headers() {
        let message = |headers: &[(&'static str, &str)]| {
            let mut map = async_nats::HeaderMap::new();
            for (name, value) in headers {
                map.insert(*name, *value);
            }
            async_nats::Message {
                subject: "chat.live.x".into(),
                reply: None,
                payload: bytes::Bytes::new(),
                headers: Some(map),
                status: None,
                description: None,
                length: 0,
            }
        };
        let republished = message(&[
            ("Nats-Stream", "CHAT_EVENTS"),
            (subjects::HEADER_SEQUENCE, "12"),
            (subjects::HEADER_LAST_SEQUENCE, "9"),
            ("Nats-Time-Stamp", "2026-11-29T04:00:00Z"),
        ]);
        assert_eq!(republished_sequences(&republished), (Some(12), Some(9)));
        let first = message(&[(subjects::HEADER_SEQUENCE, "1")]);
        assert_eq!(republished_sequences(&first), (Some(1), None));
        let garbled = message(&[(subjects::HEADER_SEQUENCE, "x")]);
        assert_eq!(republished_sequences(&garbled).0, None);
    }

    #[test]
    fn event_kinds_are_read_without_parsing() {
        let id = MessageId::new();
        let chunk = Event::Chunk {
            message_id: id,
            attempt: 1,
            index: 0,
            text: "x".into(),
            published_at_us: None,
        };
        assert_eq!(event_kind(&chunk.to_payload()), Some(EventKind::Chunk));
        assert_eq!(
            event_kind(&Event::Cancelled { message_id: id }.to_payload()),
            Some(EventKind::Cancelled)
        );
        assert_eq!(event_kind(b"{\"type\":\"chunky\"}"), None);
        assert_eq!(event_kind(b"{\"type\":\"chunk"), None);
        assert_eq!(event_kind(b"[]"), None);
    }
}
