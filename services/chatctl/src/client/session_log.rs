//! What a client saw, kept with the instant each thing happened: the input
//! of [`crate::verify`] and of the stall measures.

use std::time::Duration;

use protocol::frames::SequencedEvent;
use protocol::MessageId;
use tokio::time::Instant;

/// One event as the client received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub event: SequencedEvent,
}

/// A question the client asked.
#[derive(Clone, Debug)]
pub struct Asked {
    pub message_id: MessageId,
    pub prompt: String,
    pub sent_at: Instant,
    /// When the client received the message's terminal event.
    pub finished_at: Option<Instant>,
}

/// A WebSocket the client attached, and the gateway node that served it.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub at: Instant,
    pub node: String,
}

/// Everything a client saw: the input of [`crate::verify`].
#[derive(Clone, Debug, Default)]
pub struct SessionLog {
    pub received: Vec<Received>,
    pub asked: Vec<Asked>,
    pub attachments: Vec<Attachment>,
    /// Connections lost for any reason (drop, close, error, stall).
    pub reconnects: u32,
    /// Closes with [`CloseCode::ServiceRestart`] (1012) or
    /// [`CloseCode::TryAgainLater`] (1013): the server ended the socket and
    /// expects the client back with `after_seq`.
    pub restart_closes: u32,
    /// `replay_expired` notices: the `after_seq` the client attached with
    /// was older than the stream's first event. A notice about the
    /// connection (`history` and what is stored follow), not a refusal.
    pub replay_expired: u32,
}

impl SessionLog {
    /// The events in arrival order, without timestamps.
    pub fn events(&self) -> Vec<SequencedEvent> {
        self.received.iter().map(|r| r.event.clone()).collect()
    }

    /// The node serving the connection at `at`, if one was attached then.
    pub fn node_at(&self, at: Instant) -> Option<&str> {
        self.attachments
            .iter()
            .rev()
            .find(|a| a.at <= at)
            .map(|a| a.node.as_str())
    }

    /// Whether a question was in flight (asked, not yet finished) at `at`.
    pub fn in_flight_at(&self, at: Instant) -> bool {
        self.asked
            .iter()
            .any(|a| a.sent_at <= at && a.finished_at.is_none_or(|f| f > at))
    }

    /// The first event received after `at`.
    pub fn first_event_after(&self, at: Instant) -> Option<Instant> {
        self.received.iter().map(|r| r.at).find(|t| *t > at)
    }

    /// The longest wait for an event, with a question in flight, among the
    /// waits that began between `from` and `to` (a fault that lasts, such
    /// as a pause: the first event after it began may come at once from
    /// elsewhere, the stall later). `None` when no event ended one.
    pub fn longest_silence(&self, from: Instant, to: Instant) -> Option<Duration> {
        let mut longest = None;
        let mut since = from;
        for t in self.received.iter().map(|r| r.at).filter(|t| *t > from) {
            if since > to {
                break;
            }
            if self.in_flight_at(since) {
                longest = longest.max(Some(t - since));
            }
            since = t;
        }
        longest
    }
}
