//! The contract of the chat backend: what travels on the wire between
//! browsers and gateways ([`frames`]), what is stored in JetStream
//! ([`events`], [`records`]), every NATS name ([`subjects`]) and the
//! JetStream layout, applied by operations and verified by services ([`setup`]).
//!
//! Nothing else in the workspace spells a subject, a stream name or a wire
//! type: it comes from here.

pub mod access;
pub mod close;
pub mod conflicts;
pub mod connect;
pub mod events;
pub mod frames;
pub mod ids;
pub mod records;
pub mod sessions;
pub mod setup;
pub mod stored;
pub mod subjects;
pub mod users;

pub use close::CloseCode;
pub use events::{CancelNotice, ChatRequest, Event, EventKind, FinishReason, Usage};
pub use frames::{ClientFrame, ControlKind, ErrorCode, ServerFrame};
pub use ids::{MessageId, SessionId, SessionToken, TokenHash, UserKey};

/// Milliseconds since the Unix epoch: the timestamp format of every stored record.
pub fn now_ms() -> u64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    u64::try_from(nanos / 1_000_000).unwrap_or(0)
}
