//! Replay: the stored events a client missed, read from `CHAT_EVENTS`
//! filtered to its session, as client frames; and what a client gets when
//! what it missed is older than the replay window.

use protocol::frames::{with_seq, ControlFrame};
use protocol::{stored, subjects, ErrorCode, SessionId};

use crate::app::AppState;
use crate::error::ApiError;

/// Turns sent in the `history` frame after `replay_expired`.
const HISTORY_TURNS: usize = 1_000;

/// Where a session's stream stands when a client (re)attaches.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    /// The session's last stored event (0 = none).
    pub last_seq: u64,
    /// The stream may no longer hold every event after the client's `after_seq`.
    pub expired: bool,
    /// The first sequence the stream still holds.
    pub first_available: u64,
}

/// Finds the session's last event and checks `after_seq` against the stream:
/// beyond the stream's end is `bad_request`; before its start is `expired`.
pub async fn position(
    state: &AppState,
    session: SessionId,
    after_seq: Option<u64>,
) -> Result<Position, ApiError> {
    let subject = subjects::events(session);
    let last_seq = stored::last_seq(&state.layout.events, &subject)
        .await
        .map_err(ApiError::nats)?;
    let Some(after) = after_seq else {
        return Ok(Position {
            last_seq,
            expired: false,
            first_available: 1,
        });
    };
    let info = state
        .layout
        .events
        .get_info()
        .await
        .map_err(ApiError::nats)?;
    let stream_last = info.state.last_sequence.max(last_seq);
    if after > stream_last {
        return Err(ApiError::BadRequest(format!(
            "after_seq {after} is beyond the end of the stream ({stream_last})"
        )));
    }
    let first_available = info.state.first_sequence.max(1);
    Ok(Position {
        last_seq,
        expired: after.saturating_add(1) < first_available,
        first_available,
    })
}

/// The session's stored events with `from <= seq <= until`, as frames.
pub async fn frames(
    state: &AppState,
    session: SessionId,
    from: u64,
    until: u64,
) -> Result<Vec<(u64, String)>, ApiError> {
    if until < from {
        return Ok(Vec::new());
    }
    let stored = stored::read_range(
        &state.client,
        &state.layout.events,
        &subjects::events(session),
        from,
        until,
    )
    .await
    .map_err(ApiError::nats)?;
    let frames: Vec<(u64, String)> = stored
        .into_iter()
        .filter_map(|s| with_seq(&s.payload, s.seq).map(|f| (s.seq, f)))
        .collect();
    crate::metrics::replayed(frames.len());
    Ok(frames)
}

/// What a client gets when its `after_seq` is older than the replay window:
/// the `replay_expired` error, then the finished turns to rebuild from.
pub async fn expired_notice(
    state: &AppState,
    session: SessionId,
    last_seq: u64,
) -> Result<[ControlFrame; 2], ApiError> {
    let turns = stored::read_turns(&state.client, &state.layout.history, session, HISTORY_TURNS)
        .await
        .map_err(ApiError::nats)?;
    crate::metrics::error(ErrorCode::ReplayExpired);
    Ok([
        ControlFrame::error(
            ErrorCode::ReplayExpired,
            "events after after_seq are no longer kept; the conversation's history follows",
        ),
        ControlFrame::History { turns, last_seq },
    ])
}
