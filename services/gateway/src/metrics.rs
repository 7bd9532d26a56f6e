//! The gateway's Prometheus metrics. Every name is registered at start, so
//! dashboards and alerts find them before the first event.

use std::sync::OnceLock;

use metrics::Counter;
use protocol::{ErrorCode, EventKind};

pub const CONNECTIONS_OPEN: &str = "chat_gateway_connections_open";
pub const SESSIONS_ATTACHED: &str = "chat_gateway_sessions_attached";
pub const FRAMES_IN: &str = "chat_gateway_frames_in_total";
pub const FRAMES_OUT: &str = "chat_gateway_frames_out_total";
pub const CHUNKS_FORWARDED: &str = "chat_gateway_chunks_forwarded_total";
pub const ERRORS: &str = "chat_gateway_errors_total";
pub const REPLAYS: &str = "chat_gateway_replays_total";
pub const REPLAYED_EVENTS: &str = "chat_gateway_replayed_events_total";
pub const GAP_REPAIRS: &str = "chat_gateway_gap_repairs_total";
pub const SLOW_CLIENT_CLOSES: &str = "chat_gateway_slow_client_closes_total";
pub const CATCH_UPS: &str = "chat_gateway_catch_ups_total";
pub const NATS_CONNECTED: &str = "chat_gateway_nats_connected";
/// Tokens refused (`GATEWAY_AUTH=jwt`): forged, expired, foreign, revoked.
pub const TOKENS_REFUSED: &str = "chat_gateway_tokens_refused_total";
/// `STREAM.INFO` requests for the events stream's bounds (cached, see `replay`).
pub const STREAM_INFO_REQUESTS: &str = "chat_gateway_stream_info_requests_total";

pub fn register() {
    metrics::gauge!(CONNECTIONS_OPEN).set(0.0);
    metrics::gauge!(SESSIONS_ATTACHED).set(0.0);
    metrics::counter!(CHUNKS_FORWARDED).absolute(0);
    metrics::counter!(REPLAYS).absolute(0);
    metrics::counter!(REPLAYED_EVENTS).absolute(0);
    metrics::counter!(GAP_REPAIRS).absolute(0);
    metrics::counter!(SLOW_CLIENT_CLOSES).absolute(0);
    metrics::counter!(CATCH_UPS).absolute(0);
    metrics::counter!(STREAM_INFO_REQUESTS).absolute(0);
    metrics::counter!(TOKENS_REFUSED).absolute(0);
    metrics::counter!(ERRORS, "code" => "internal").absolute(0);
    for kind in protocol::ClientFrame::KINDS {
        metrics::counter!(FRAMES_IN, "type" => kind).absolute(0);
    }
    EVENT_COUNTERS.get_or_init(EventCounters::new);
}

/// The counters every event frame sent touches, looked up once (after the
/// recorder is installed, by [`register`]): a lookup by name and label
/// hashes the key on every call, a few percent of the gateway's
/// instructions per chunk.
struct EventCounters {
    /// `frames_out` per [`EventKind`], in the order of [`EventKind::ALL`].
    frames_out: [Counter; EventKind::ALL.len()],
    /// `frames_out` of a frame whose type this gateway does not know.
    frames_out_other: Counter,
    chunks_forwarded: Counter,
}

static EVENT_COUNTERS: OnceLock<EventCounters> = OnceLock::new();

impl EventCounters {
    fn new() -> Self {
        Self {
            frames_out: EventKind::ALL
                .map(|kind| metrics::counter!(FRAMES_OUT, "type" => kind.as_str())),
            frames_out_other: metrics::counter!(FRAMES_OUT, "type" => OTHER_EVENT),
            chunks_forwarded: metrics::counter!(CHUNKS_FORWARDED),
        }
    }
}

/// The `frames_out` label of an event frame of unknown type.
const OTHER_EVENT: &str = "event";

/// An event frame (stored or live) went to a client; `live_chunk` when it
/// is a chunk forwarded live.
pub fn event_frame_out(kind: Option<EventKind>, live_chunk: bool) {
    let Some(counters) = EVENT_COUNTERS.get() else {
        // No recorder registered (unit tests): count through the lookup.
        frames_out(kind.map_or(OTHER_EVENT, EventKind::as_str), 1);
        if live_chunk {
            chunk_forwarded();
        }
        return;
    };
    let frames = kind
        .and_then(|kind| EventKind::ALL.iter().position(|k| *k == kind))
        .and_then(|i| counters.frames_out.get(i))
        .unwrap_or(&counters.frames_out_other);
    frames.increment(1);
    if live_chunk {
        counters.chunks_forwarded.increment(1);
    }
}

pub fn error(code: ErrorCode) {
    metrics::counter!(ERRORS, "code" => code.as_str()).increment(1);
}

pub fn frame_in(kind: &'static str) {
    metrics::counter!(FRAMES_IN, "type" => kind).increment(1);
}

pub fn frames_out(kind: &'static str, n: u64) {
    metrics::counter!(FRAMES_OUT, "type" => kind).increment(n);
}

pub fn nats_connected(connected: bool) {
    metrics::gauge!(NATS_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

pub fn sessions_attached(n: usize) {
    metrics::gauge!(SESSIONS_ATTACHED).set(n as f64);
}

pub fn connection_opened() {
    metrics::gauge!(CONNECTIONS_OPEN).increment(1.0);
}

pub fn connection_closed() {
    metrics::gauge!(CONNECTIONS_OPEN).decrement(1.0);
}

pub fn slow_client_closed() {
    metrics::counter!(SLOW_CLIENT_CLOSES).increment(1);
}

/// A socket fell behind its session's broadcast ring and catches up on
/// what it skipped from the session's recent events (`--recent-events`),
/// and from the stream for anything older.
pub fn caught_up() {
    metrics::counter!(CATCH_UPS).increment(1);
}

pub fn replay_started() {
    metrics::counter!(REPLAYS).increment(1);
}

pub fn replayed(events: usize) {
    metrics::counter!(REPLAYED_EVENTS).increment(events as u64);
}

pub fn stream_info_asked() {
    metrics::counter!(STREAM_INFO_REQUESTS).increment(1);
}

pub fn gap_repaired() {
    metrics::counter!(GAP_REPAIRS).increment(1);
}

pub fn chunk_forwarded() {
    metrics::counter!(CHUNKS_FORWARDED).increment(1);
}

pub fn token_refused() {
    metrics::counter!(TOKENS_REFUSED).increment(1);
}
