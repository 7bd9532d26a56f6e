//! The WebSocket frames between a client and a gateway (docs/PROTOCOL.md,
//! "WebSocket"), and the error codes of frames and REST bodies.

use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::ids::{MessageId, SessionId, SessionToken};
use crate::records::{SessionSummary, Turn};
use crate::users::SessionChange;

/// A frame a client sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// The session's token, as the first frame of a socket opened with
    /// `?session=`: a token never travels in a URL (URLs end up in logs,
    /// proxies and browser history). Answered by `ready`.
    Auth {
        token: SessionToken,
    },
    /// Ask a question; answered by `accepted`.
    Chat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<MessageId>,
        content: String,
        /// A model from the workers' configured list; `None` = the default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    /// Ask for a new answer to the session's last question; answered by
    /// `accepted`. A new message (`message_id`) that names the one it
    /// replaces (`replaces`, by default the session's last question).
    Regenerate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<MessageId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<MessageId>,
        /// As in `Chat`: `None` = the workers' default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    /// Stop that answer.
    Cancel {
        message_id: MessageId,
    },
    /// Replay every stored event with `seq > after_seq` on this connection.
    Resume {
        after_seq: u64,
    },
    /// `GATEWAY_AUTH=jwt`: a new token for the same `sub`, before the
    /// socket's token expires (after `token_expiring`). Nothing is answered
    /// when it is accepted; a refused one gets `unauthorized`.
    Refresh {
        token: SessionToken,
    },
    Ping,
}

impl ClientFrame {
    /// Every client frame `type`, as the wire spells it.
    pub const AUTH: &'static str = "auth";
    pub const CHAT: &'static str = "chat";
    pub const REGENERATE: &'static str = "regenerate";
    pub const CANCEL: &'static str = "cancel";
    pub const RESUME: &'static str = "resume";
    pub const REFRESH: &'static str = "refresh";
    pub const PING: &'static str = "ping";
    /// Every client frame `type`, as spelled on the wire.
    pub const KINDS: [&'static str; 7] = [
        Self::AUTH,
        Self::CHAT,
        Self::REGENERATE,
        Self::CANCEL,
        Self::RESUME,
        Self::REFRESH,
        Self::PING,
    ];

    /// Parses a text frame, turning every way it can be wrong into a message
    /// fit for a `bad_request` error frame.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
        let Some(object) = value.as_object() else {
            return Err("a frame must be a JSON object".into());
        };
        match object.get("type").and_then(|t| t.as_str()) {
            None => return Err("a frame needs a string field \"type\"".into()),
            Some(kind) if Self::KINDS.contains(&kind) => {}
            Some(other) => return Err(format!("unknown frame type {:?}", truncate(other, 32))),
        }
        serde_json::from_value(value).map_err(|e| format!("invalid frame: {e}"))
    }

    /// The frame's `type`, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Auth { .. } => Self::AUTH,
            ClientFrame::Chat { .. } => Self::CHAT,
            ClientFrame::Regenerate { .. } => Self::REGENERATE,
            ClientFrame::Cancel { .. } => Self::CANCEL,
            ClientFrame::Resume { .. } => Self::RESUME,
            ClientFrame::Refresh { .. } => Self::REFRESH,
            ClientFrame::Ping => Self::PING,
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Error codes of `error` frames and of REST error bodies (docs/PROTOCOL.md,
/// "Error codes", says when each is sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    /// Refused whoever asks: a WebSocket opened by a page of another site.
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    Overloaded,
    ModelFailed,
    RetriesExhausted,
    /// `after_seq` is older than what the replay window still holds.
    ReplayExpired,
    Internal,
}

impl ErrorCode {
    /// Every code, for documents and for tests that mirror the list elsewhere.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::ModelFailed,
        ErrorCode::RetriesExhausted,
        ErrorCode::ReplayExpired,
        ErrorCode::Internal,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ModelFailed => "model_failed",
            ErrorCode::RetriesExhausted => "retries_exhausted",
            ErrorCode::ReplayExpired => "replay_expired",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Frames a gateway makes itself (not read from the session's stream).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlFrame {
    /// The connection is attached; `token` only when the session was just created.
    Ready {
        session_id: SessionId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        node: String,
        last_seq: u64,
    },
    /// The request is queued; `seq` is that of its `user_message` event.
    Accepted {
        message_id: MessageId,
        seq: u64,
    },
    /// A refused frame (no `seq`: it is not part of the session's stream).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<MessageId>,
        code: ErrorCode,
        message: String,
    },
    /// The finished turns, sent after `replay_expired` so the client can
    /// rebuild the conversation; stored events after it follow.
    History {
        turns: Vec<Turn>,
        last_seq: u64,
    },
    Pong,
    /// `GATEWAY_AUTH=jwt`: the socket's token expires in `in_ms`; without a
    /// `refresh` by then the socket closes (1008 `token expired`).
    TokenExpiring {
        in_ms: u64,
    },
    /// `GATEWAY_AUTH=jwt`: the user's session list changed (on any device,
    /// any gateway); `session` is the entry as listed now, when known.
    SessionList {
        change: SessionChange,
        session_id: SessionId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionSummary>,
    },
}

/// The `type` of a frame a gateway makes itself: tools and metrics labels
/// use this instead of spelling the strings again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlKind {
    Ready,
    Accepted,
    Error,
    History,
    Pong,
    TokenExpiring,
    SessionList,
}

impl ControlKind {
    pub const ALL: [ControlKind; 7] = [
        ControlKind::Ready,
        ControlKind::Accepted,
        ControlKind::Error,
        ControlKind::History,
        ControlKind::Pong,
        ControlKind::TokenExpiring,
        ControlKind::SessionList,
    ];

    /// The wire spelling, as in `{"type": ...}`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ControlKind::Ready => "ready",
            ControlKind::Accepted => "accepted",
            ControlKind::Error => "error",
            ControlKind::History => "history",
            ControlKind::Pong => "pong",
            ControlKind::TokenExpiring => "token_expiring",
            ControlKind::SessionList => "session_list",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl ControlFrame {
    pub fn kind(&self) -> ControlKind {
        match self {
            ControlFrame::Ready { .. } => ControlKind::Ready,
            ControlFrame::Accepted { .. } => ControlKind::Accepted,
            ControlFrame::Error { .. } => ControlKind::Error,
            ControlFrame::History { .. } => ControlKind::History,
            ControlFrame::Pong => ControlKind::Pong,
            ControlFrame::TokenExpiring { .. } => ControlKind::TokenExpiring,
            ControlFrame::SessionList { .. } => ControlKind::SessionList,
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ControlFrame::Error {
            message_id: None,
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An event of the session's stream as a client receives it: the stored
/// event plus its sequence in `CHAT_EVENTS`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequencedEvent {
    pub seq: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// Any frame a gateway sends, for clients (tools, tests) that read them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerFrame {
    Event(SequencedEvent),
    Control(ControlFrame),
}

impl ServerFrame {
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The stream sequence, for frames that come from the session's stream.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ServerFrame::Event(e) => Some(e.seq),
            ServerFrame::Control(_) => None,
        }
    }
}

/// Turns a stored event payload (a JSON object without `seq`) into the client
/// frame by splicing `"seq":N` in before the closing brace. No parse: this is
/// the per-chunk path of every gateway. `None` when the payload is not an
/// object, which only a foreign publisher could cause.
pub fn with_seq(payload: &[u8], seq: u64) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?.trim_end();
    let body = text.strip_suffix('}')?;
    if !body.starts_with('{') {
        return None;
    }
    let mut frame = String::with_capacity(text.len() + 24);
    frame.push_str(body);
    if body.trim_end().len() > 1 {
        frame.push(',');
    }
    frame.push_str("\"seq\":");
    frame.push_str(itoa::Buffer::new().format(seq));
    frame.push('}');
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_and_reject_clearly() {
        let chat = ClientFrame::parse(r#"{"type":"chat","content":"hi"}"#).unwrap();
        assert_eq!(
            chat,
            ClientFrame::Chat {
                message_id: None,
                content: "hi".into(),
                model: None
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"regenerate"}"#).unwrap(),
            ClientFrame::Regenerate {
                message_id: None,
                replaces: None,
                model: None
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"resume","after_seq":7}"#).unwrap(),
            ClientFrame::Resume { after_seq: 7 }
        );
        for (bad, expect) in [
            ("{not json", "malformed JSON"),
            ("[1,2]", "JSON object"),
            (r#"{"content":"x"}"#, "\"type\""),
            (r#"{"type":"shout"}"#, "unknown frame type"),
            (r#"{"type":"chat"}"#, "invalid frame"),
            (r#"{"type":"chat","content":5}"#, "invalid frame"),
            (r#"{"type":"cancel","message_id":"nope"}"#, "invalid frame"),
            (r#"{"type":"resume","after_seq":-1}"#, "invalid frame"),
            (r#"{"type":"resume","after_seq":"3"}"#, "invalid frame"),
        ] {
            let err = ClientFrame::parse(bad).unwrap_err();
            assert!(err.contains(expect), "{bad}: {err}");
        }
    }

    #[test]
    fn client_frames_with_unknown_fields_are_refused() {
        for bad in [
            r#"{"type":"chat","content":"hi","colour":"red"}"#,
            r#"{"type":"cancel","message_id":"7d3f0a3e-3c1b-4d55-9a43-2f4b52c1a0de","why":1}"#,
            r#"{"type":"resume","after_seq":1,"from":0}"#,
            r#"{"type":"regenerate","content":"a new question"}"#,
        ] {
            let err = ClientFrame::parse(bad).unwrap_err();
            assert!(err.contains("unknown field"), "{bad}: {err}");
        }
        // `ping` has no fields for serde to check: extras are ignored.
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping","now":1}"#).unwrap(),
            ClientFrame::Ping
        );
    }

    #[test]
    fn kinds_are_the_serialised_type_tags() {
        let client = [
            ClientFrame::Auth {
                token: SessionToken::presented("t"),
            },
            ClientFrame::Chat {
                message_id: None,
                content: "q".into(),
                model: None,
            },
            ClientFrame::Regenerate {
                message_id: None,
                replaces: None,
                model: None,
            },
            ClientFrame::Cancel {
                message_id: MessageId::new(),
            },
            ClientFrame::Resume { after_seq: 0 },
            ClientFrame::Refresh {
                token: SessionToken::presented("jwt"),
            },
            ClientFrame::Ping,
        ];
        assert_eq!(client.len(), ClientFrame::KINDS.len());
        for frame in client {
            let json = serde_json::to_value(&frame).unwrap();
            assert_eq!(json["type"], frame.kind());
            assert!(ClientFrame::KINDS.contains(&frame.kind()));
        }
        let control = [
            ControlFrame::Ready {
                session_id: SessionId::new(),
                token: None,
                node: "n".into(),
                last_seq: 0,
            },
            ControlFrame::Accepted {
                message_id: MessageId::new(),
                seq: 1,
            },
            ControlFrame::error(ErrorCode::Internal, "x"),
            ControlFrame::History {
                turns: Vec::new(),
                last_seq: 0,
            },
            ControlFrame::Pong,
            ControlFrame::TokenExpiring { in_ms: 5 },
            ControlFrame::SessionList {
                change: crate::users::SessionChange::Created,
                session_id: SessionId::new(),
                session: None,
            },
        ];
        assert_eq!(control.len(), ControlKind::ALL.len());
        for frame in control {
            let json: serde_json::Value = serde_json::from_str(&frame.to_json()).unwrap();
            assert_eq!(json["type"], frame.kind().as_str());
            assert_eq!(
                ControlKind::parse(frame.kind().as_str()),
                Some(frame.kind())
            );
        }
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn seq_is_spliced_into_stored_events() {
        let ev = Event::Cancelled {
            message_id: MessageId::new(),
        };
        let frame = with_seq(&ev.to_payload(), 42).unwrap();
        match ServerFrame::parse(&frame).unwrap() {
            ServerFrame::Event(SequencedEvent { seq, event }) => {
                assert_eq!(seq, 42);
                assert_eq!(event, ev);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert_eq!(with_seq(b"{}", 1).unwrap(), r#"{"seq":1}"#);
        assert!(with_seq(b"[1]", 1).is_none());
        assert!(with_seq(b"\xff}", 1).is_none());
    }

    #[test]
    fn control_frames_parse_as_control() {
        let err = ControlFrame::error(ErrorCode::RateLimited, "slow down").to_json();
        assert_eq!(
            err,
            r#"{"type":"error","code":"rate_limited","message":"slow down"}"#
        );
        assert!(matches!(
            ServerFrame::parse(&err).unwrap(),
            ServerFrame::Control(_)
        ));
        // An error event from the stream carries a seq and parses as an event.
        let stored = Event::Error {
            message_id: None,
            code: ErrorCode::RetriesExhausted,
            message: "x".into(),
        };
        let frame = with_seq(&stored.to_payload(), 9).unwrap();
        assert_eq!(ServerFrame::parse(&frame).unwrap().seq(), Some(9));
    }
}
