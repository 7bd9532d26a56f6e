//! Live delivery: one core subscription per session on this gateway, to the
//! republished `chat.live.<session>`, held while at least one socket of the
//! session is attached, fanned out to those sockets through a bounded
//! broadcast. The frame is built once per event (sequence spliced in, no
//! parse) and shared by every socket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use protocol::{subjects, SessionId};
use tokio::sync::broadcast;

use crate::metrics;

/// One event of a session as it arrived live.
#[derive(Debug)]
pub struct LiveEvent {
    /// Its sequence in `CHAT_EVENTS`.
    pub seq: u64,
    /// The previous sequence on the session's subject (0 for the first):
    /// a socket that has not sent that one has a gap to fill first.
    pub prev: u64,
    /// The client frame, `seq` included.
    pub frame: Utf8Bytes,
    pub is_chunk: bool,
}

struct Feed {
    sender: broadcast::Sender<Arc<LiveEvent>>,
    sockets: usize,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
pub struct LiveHub {
    client: async_nats::Client,
    feeds: Arc<Mutex<HashMap<SessionId, Feed>>>,
    /// Events buffered per socket before it counts as too slow.
    capacity: usize,
    /// Test hook: drop every n-th live message before fan-out, so tests can
    /// show that gaps are repaired from the stream. 0 = never.
    drop_every: u64,
}

/// A socket's place in a session's feed; leaving the last one unsubscribes.
pub struct Attachment {
    pub receiver: broadcast::Receiver<Arc<LiveEvent>>,
    hub: LiveHub,
    session: SessionId,
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
                    feed.task.abort();
                }
                metrics::sessions_attached(feeds.len());
            }
        }
    }
}

impl LiveHub {
    pub fn new(client: async_nats::Client, capacity: usize, drop_every: u64) -> Self {
        Self {
            client,
            feeds: Arc::default(),
            capacity: capacity.max(1),
            drop_every,
        }
    }

    fn join(&self, session: SessionId) -> Option<Attachment> {
        let mut feeds = self.feeds.lock().ok()?;
        let feed = feeds.get_mut(&session)?;
        feed.sockets += 1;
        Some(Attachment {
            receiver: feed.sender.subscribe(),
            hub: self.clone(),
            session,
        })
    }

    /// Attaches a socket to the session's live events. When this returns,
    /// the server has the subscription: any event stored from now on will
    /// arrive, so a replay read afterwards leaves no hole.
    pub async fn attach(&self, session: SessionId) -> Result<Attachment, async_nats::Error> {
        if let Some(attachment) = self.join(session) {
            return Ok(attachment);
        }
        let subscriber = self.client.subscribe(subjects::live(session)).await?;
        self.client.flush().await?;
        let mut feeds = self.feeds.lock().map_err(|_| "live feeds lock poisoned")?;
        if let Some(feed) = feeds.get_mut(&session) {
            // Another socket of the session got there first: use its feed
            // (ours unsubscribes as it drops).
            feed.sockets += 1;
            return Ok(Attachment {
                receiver: feed.sender.subscribe(),
                hub: self.clone(),
                session,
            });
        }
        let (sender, receiver) = broadcast::channel(self.capacity);
        let task = tokio::spawn(forward(subscriber, sender.clone(), self.drop_every));
        feeds.insert(
            session,
            Feed {
                sender,
                sockets: 1,
                task,
            },
        );
        metrics::sessions_attached(feeds.len());
        Ok(Attachment {
            receiver,
            hub: self.clone(),
            session,
        })
    }
}

fn header_u64(message: &async_nats::Message, name: &str) -> Option<u64> {
    message.headers.as_ref()?.get(name)?.as_str().parse().ok()
}

async fn forward(
    mut subscriber: async_nats::Subscriber,
    sender: broadcast::Sender<Arc<LiveEvent>>,
    drop_every: u64,
) {
    let mut received = 0u64;
    while let Some(message) = subscriber.next().await {
        received += 1;
        if drop_every > 0 && received.is_multiple_of(drop_every) {
            continue;
        }
        let Some(seq) = header_u64(&message, subjects::HEADER_SEQUENCE) else {
            tracing::debug!(subject = %message.subject, "live message without a sequence; ignored");
            continue;
        };
        let prev = header_u64(&message, subjects::HEADER_LAST_SEQUENCE).unwrap_or(0);
        let Some(frame) = protocol::frames::with_seq(&message.payload, seq) else {
            continue;
        };
        let is_chunk = message.payload.starts_with(b"{\"type\":\"chunk\"");
        // No receiver right now is fine: sockets come and go.
        let _ = sender.send(Arc::new(LiveEvent {
            seq,
            prev,
            frame: frame.into(),
            is_chunk,
        }));
    }
}
