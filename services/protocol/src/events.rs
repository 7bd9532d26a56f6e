//! What travels through JetStream: the job a gateway queues for a worker
//! ([`ChatRequest`]) and the events a session's subject stores ([`Event`]).
//!
//! An event is stored as the JSON of the client frame *without* its `seq`
//! (JetStream assigns the sequence on store); a gateway forwards it by
//! splicing the sequence in ([`crate::frames::with_seq`]), with no re-parse.

use serde::{Deserialize, Serialize};

use crate::frames::ErrorCode;
use crate::ids::{MessageId, SessionId};

/// A chat job in `CHAT_REQUESTS`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub session_id: SessionId,
    pub message_id: MessageId,
    pub content: String,
    /// Sequence of the `user_message` event in `CHAT_EVENTS`.
    pub user_seq: u64,
    /// Set on a regeneration: the earlier message whose answer this one
    /// replaces. Its turn is left out of the model's context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<MessageId>,
    /// The model the client asked for; `None` means the workers' default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Milliseconds since the epoch when the gateway accepted it.
    pub accepted_at_ms: u64,
    /// Fields of a newer version: kept when the job is written into a dead
    /// letter.
    #[serde(flatten)]
    pub extra: crate::records::LaterFields,
}

/// The core message a gateway publishes on `subjects::cancel(session)` to stop
/// a running answer (JSON `{"message_id": "..."}`). Workers listen on
/// `subjects::CANCEL_ALL`; the KV cancel flag covers a job not yet started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelNotice {
    pub message_id: MessageId,
    /// Set when the notice is not a user's cancel but a worker taking the
    /// job over (a redelivery): every other worker still running this
    /// message stops at once, silently, so an answer is never generated
    /// twice at the same time, even when a worker lost its lease unaware
    /// (progress acks lost while NATS restarted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// With `claimed_by`: the claiming attempt. A running attempt stops
    /// only for a higher one, so two attempts that claim in turn (one
    /// re-admitted after waiting out an election) never stop each other;
    /// a claim without it stops any other run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl CancelNotice {
    pub fn to_payload(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }
}

/// Why an answer ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished its answer.
    Stop,
    /// The answer hit the token limit.
    Length,
    /// Anything else a model backend reports, passed through.
    #[serde(untagged)]
    Other(String),
}

/// Token counts a model reports for one answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// One stored event of a session, as it is published to `chat.events.<session>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The echo of a question, so every tab (and a replay) shows it.
    UserMessage {
        message_id: MessageId,
        content: String,
        /// Set when the question is a regeneration: the earlier message (of
        /// the same question) whose answer this one replaces. Absent on
        /// ordinary questions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<MessageId>,
    },
    /// The next piece of an answer; `index` counts from 0 within an attempt.
    Chunk {
        message_id: MessageId,
        attempt: u32,
        index: u32,
        text: String,
        /// Microseconds since the epoch when the worker published it: lets a
        /// client on the same clock measure delivery latency.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        published_at_us: Option<u64>,
    },
    /// The next piece of a reasoning model's thinking, before its answer:
    /// shown apart from the answer, never part of it. `index` counts from 0
    /// within an attempt, separately from the chunks'.
    Reasoning {
        message_id: MessageId,
        attempt: u32,
        index: u32,
        text: String,
        /// As on a chunk: when the worker published it (microseconds since
        /// the epoch), so a client can tell how long the model thought.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        published_at_us: Option<u64>,
    },
    /// A worker died mid-answer; drop the partial answer (and its
    /// reasoning), attempt `attempt` follows.
    Restart { message_id: MessageId, attempt: u32 },
    /// The answer is complete.
    Done {
        message_id: MessageId,
        attempt: u32,
        finish_reason: FinishReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    /// The answer was stopped by a cancel.
    Cancelled { message_id: MessageId },
    /// The answer failed for good (or was refused after its echo was stored).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<MessageId>,
        code: ErrorCode,
        message: String,
    },
}

/// The `type` of a stored event: metrics labels and frame routing use this
/// instead of spelling the strings again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    UserMessage,
    Chunk,
    Reasoning,
    Restart,
    Done,
    Cancelled,
    Error,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::UserMessage,
        EventKind::Chunk,
        EventKind::Reasoning,
        EventKind::Restart,
        EventKind::Done,
        EventKind::Cancelled,
        EventKind::Error,
    ];

    /// The wire spelling, as in `{"type": ...}`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::UserMessage => "user_message",
            EventKind::Chunk => "chunk",
            EventKind::Reasoning => "reasoning",
            EventKind::Restart => "restart",
            EventKind::Done => "done",
            EventKind::Cancelled => "cancelled",
            EventKind::Error => "error",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// Whether an event of this kind ends its message's answer.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::Done | EventKind::Cancelled | EventKind::Error
        )
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::UserMessage { .. } => EventKind::UserMessage,
            Event::Chunk { .. } => EventKind::Chunk,
            Event::Reasoning { .. } => EventKind::Reasoning,
            Event::Restart { .. } => EventKind::Restart,
            Event::Done { .. } => EventKind::Done,
            Event::Cancelled { .. } => EventKind::Cancelled,
            Event::Error { .. } => EventKind::Error,
        }
    }

    pub fn message_id(&self) -> Option<MessageId> {
        match self {
            Event::UserMessage { message_id, .. }
            | Event::Chunk { message_id, .. }
            | Event::Reasoning { message_id, .. }
            | Event::Restart { message_id, .. }
            | Event::Done { message_id, .. }
            | Event::Cancelled { message_id } => Some(*message_id),
            Event::Error { message_id, .. } => *message_id,
        }
    }

    /// The attempt of the answer this event belongs to, for the events
    /// that carry one (`chunk`, `reasoning`, `restart`, `done`).
    pub fn attempt(&self) -> Option<u32> {
        match self {
            Event::Chunk { attempt, .. }
            | Event::Reasoning { attempt, .. }
            | Event::Restart { attempt, .. }
            | Event::Done { attempt, .. } => Some(*attempt),
            Event::UserMessage { .. } | Event::Cancelled { .. } | Event::Error { .. } => None,
        }
    }

    /// Whether this event ends its message's answer.
    pub fn is_terminal(&self) -> bool {
        self.kind().is_terminal()
    }

    /// The JSON stored in the stream, written into one buffer sized for it
    /// up front: a chunk's JSON would otherwise grow its buffer five times
    /// (8, 16, … 256 bytes), which showed in the worker's per-chunk profile.
    pub fn to_payload(&self) -> bytes::Bytes {
        let mut json = Vec::with_capacity(self.payload_size_hint());
        // Serialising these plain types cannot fail: no maps with non-string
        // keys, no custom serialisers that error.
        match serde_json::to_writer(&mut json, self) {
            Ok(()) => json.into(),
            Err(_) => bytes::Bytes::new(),
        }
    }

    /// Enough bytes for the event's JSON unless its text needs escaping:
    /// the fixed part of the longest frame (a chunk with every field, ~150
    /// bytes) plus its free text.
    fn payload_size_hint(&self) -> usize {
        const FIXED: usize = 192;
        let text = match self {
            Event::UserMessage { content, .. } => content.len(),
            Event::Chunk { text, .. } | Event::Reasoning { text, .. } => text.len(),
            Event::Error { message, .. } => message.len(),
            Event::Restart { .. } | Event::Done { .. } | Event::Cancelled { .. } => 0,
        };
        FIXED + text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_as_protocol_frames_without_seq() {
        let id: MessageId = "7d3f0a3e-3c1b-4d55-9a43-2f4b52c1a0de".parse().unwrap();
        let chunk = Event::Chunk {
            message_id: id,
            attempt: 1,
            index: 0,
            text: "Hello".into(),
            published_at_us: None,
        };
        assert_eq!(
            String::from_utf8(chunk.to_payload().to_vec()).unwrap(),
            r#"{"type":"chunk","message_id":"7d3f0a3e-3c1b-4d55-9a43-2f4b52c1a0de","attempt":1,"index":0,"text":"Hello"}"#
        );
        let reasoning = Event::Reasoning {
            message_id: id,
            attempt: 1,
            index: 0,
            text: "Let me think".into(),
            published_at_us: None,
        };
        assert_eq!(
            String::from_utf8(reasoning.to_payload().to_vec()).unwrap(),
            r#"{"type":"reasoning","message_id":"7d3f0a3e-3c1b-4d55-9a43-2f4b52c1a0de","attempt":1,"index":0,"text":"Let me think"}"#
        );
        assert!(!reasoning.is_terminal());
        let done = Event::Done {
            message_id: id,
            attempt: 2,
            finish_reason: FinishReason::Other("content_filter".into()),
            usage: None,
        };
        let json = serde_json::to_string(&done).unwrap();
        assert!(
            json.contains(r#""finish_reason":"content_filter""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), done);
        let stop: FinishReason = serde_json::from_str("\"stop\"").unwrap();
        assert_eq!(stop, FinishReason::Stop);
    }

    #[test]
    fn payloads_are_the_plain_json_whatever_their_size() {
        let id = MessageId::new();
        for text in [
            String::new(),
            "x".repeat(1000),
            "\"quoted\"\n\u{1}".repeat(100),
        ] {
            let chunk = Event::Chunk {
                message_id: id,
                attempt: 1,
                index: 7,
                text,
                published_at_us: Some(u64::MAX),
            };
            assert_eq!(
                chunk.to_payload().to_vec(),
                serde_json::to_vec(&chunk).unwrap()
            );
        }
    }

    #[test]
    fn event_kinds_are_the_serialised_type_tags() {
        let id = MessageId::new();
        let events = [
            Event::UserMessage {
                message_id: id,
                content: "q".into(),
                replaces: None,
            },
            Event::Chunk {
                message_id: id,
                attempt: 1,
                index: 0,
                text: "a".into(),
                published_at_us: None,
            },
            Event::Reasoning {
                message_id: id,
                attempt: 1,
                index: 0,
                text: "hmm".into(),
                published_at_us: Some(1),
            },
            Event::Restart {
                message_id: id,
                attempt: 2,
            },
            Event::Done {
                message_id: id,
                attempt: 1,
                finish_reason: FinishReason::Stop,
                usage: None,
            },
            Event::Cancelled { message_id: id },
            Event::Error {
                message_id: None,
                code: ErrorCode::Internal,
                message: "x".into(),
            },
        ];
        assert_eq!(events.len(), EventKind::ALL.len());
        for event in events {
            let json: serde_json::Value = serde_json::from_slice(&event.to_payload()).unwrap();
            assert_eq!(json["type"], event.kind().as_str());
            assert_eq!(EventKind::parse(event.kind().as_str()), Some(event.kind()));
            assert_eq!(event.is_terminal(), event.kind().is_terminal());
        }
    }
}
