//! Replay: the stored events a client missed, read from `CHAT_EVENTS`
//! filtered to its session, as client frames; and what a client gets when
//! what it missed is older than the replay window. [`StoredEvents`] is what
//! a socket's relay reads (so it can be tested against a fake stream);
//! [`SessionEvents`] is the real one, also used by REST.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::Stream;

use protocol::frames::{with_seq, ControlFrame};
use protocol::{stored, subjects, ErrorCode, SessionId};

use crate::app::AppState;
use crate::error::ApiError;

/// Turns in `GET /api/history` and in the `history` frame after
/// `replay_expired`.
pub const HISTORY_TURNS: usize = 1_000;

/// Where a session's stream stands when a client (re)attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The session's last stored event (0 = none).
    pub last_seq: u64,
    /// The stream may no longer hold every event after the client's `after_seq`.
    pub expired: bool,
    /// The first sequence the stream still holds.
    pub first_available: u64,
}

/// Parses the `after_seq` a client sent in a URL (a socket's or
/// `GET /api/events`'s query).
pub fn parse_after_seq(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "after_seq must be a non-negative integer, not {:?}",
            raw.chars().take(32).collect::<String>()
        ))
    })
}

/// How long the events stream's bounds are reused before the server is asked
/// again.
const BOUNDS_TTL: Duration = Duration::from_secs(1);

/// The events stream's first and last sequence, as `STREAM.INFO` gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub first: u64,
    pub last: u64,
    /// Nothing can leave the stream for a while: its oldest event is far
    /// from `max_age` and it is far from `max_bytes` and `max_msgs`.
    far_from_limits: bool,
}

/// How long the stream's leader gets to answer `STREAM.INFO`.
const INFO_PATIENCE: Duration = Duration::from_secs(2);
/// How old cached bounds may be when the leader does not answer: about one
/// election (nats-server's replicas wait 4–9 s for a lost leader).
const STALE_BOUNDS_AT_MOST: Duration = Duration::from_secs(10);

/// A stream this far from its age limit (or under nine tenths of its size
/// limits) drops nothing within [`BOUNDS_TTL`].
const AGE_HEADROOM: Duration = Duration::from_secs(30);

/// The events stream's bounds, asked of the server at most once per
/// [`BOUNDS_TTL`] however many clients attach with `after_seq`, resume or
/// page through `GET /api/events`: a flood of those reads the cache, not the
/// JetStream API. A cached first sequence can only be too low (the stream
/// drops its oldest events), so it could call an `after_seq` whose
/// successors just left the stream still replayable. It is used only when
/// that cannot be: the stream was far from its limits when asked, or the
/// cached first is already past `after_seq`'s successor (expired either
/// way), or that successor (`after_seq` itself when it is the cached end)
/// is still stored (one direct get, which any replica answers). A rule by
/// position alone (the oldest tenth of the stream) was not enough: a
/// stream's oldest events can all have been written within a second, and
/// leave within one. An `after_seq` beyond the cached end (the stream grew
/// since) is asked again too.
#[derive(Default)]
pub struct StreamBounds {
    cached: Mutex<Option<(Instant, Bounds)>>,
}

impl StreamBounds {
    pub async fn for_after(&self, events: &Stream, after: u64) -> Result<Bounds, ApiError> {
        let cached = self.cached.lock().ok().and_then(|c| *c);
        if let Some((at, bounds)) = cached {
            if at.elapsed() < BOUNDS_TTL && after <= bounds.last {
                let successor = after.saturating_add(1);
                // Events leave oldest first: while the successor, or
                // `after` itself, is stored, nothing after `after` has left.
                // A client caught up with the cached end usually has no
                // successor stored yet: its own last event is asked first.
                if bounds.far_from_limits
                    || successor < bounds.first
                    || (after == bounds.last && still_stored(events, after).await)
                    || still_stored(events, successor).await
                {
                    return Ok(bounds);
                }
            }
        }
        // Only the stream's leader answers: during an election (a cluster
        // node lost) nobody does, and the client's 5 s time-out is longer
        // than a client waits for `ready`. A cached answer from far inside
        // the limits, at most an election old, still holds: nothing can
        // have left the stream since.
        let info = match tokio::time::timeout(INFO_PATIENCE, events.get_info()).await {
            Ok(Ok(info)) => info,
            failed => {
                let still_holds = |(at, b): &(Instant, Bounds)| {
                    b.far_from_limits && at.elapsed() < STALE_BOUNDS_AT_MOST
                };
                if let Some((_, bounds)) = cached.filter(still_holds) {
                    return Ok(bounds);
                }
                return Err(match failed {
                    Ok(Err(e)) => ApiError::nats(e),
                    _ => ApiError::nats("the events stream did not answer (no leader?)"),
                });
            }
        };
        let (config, state) = (&info.config, &info.state);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let oldest_age =
            now.saturating_sub(u64::try_from(state.first_timestamp.unix_timestamp()).unwrap_or(0));
        let under =
            |used: u64, limit: i64| limit <= 0 || used < u64::try_from(limit).unwrap_or(0) / 10 * 9;
        let bounds = Bounds {
            first: state.first_sequence,
            last: state.last_sequence,
            far_from_limits: (config.max_age.is_zero()
                || Duration::from_secs(oldest_age) + AGE_HEADROOM < config.max_age)
                && under(state.bytes, config.max_bytes)
                && under(state.messages, config.max_messages),
        };
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((Instant::now(), bounds));
        }
        crate::metrics::stream_info_asked();
        Ok(bounds)
    }
}

/// Whether the events stream still holds `seq` (then nothing after it has
/// expired). Not found, or not answered in time, counts as gone: the caller
/// asks the stream's leader instead.
async fn still_stored(events: &Stream, seq: u64) -> bool {
    matches!(
        tokio::time::timeout(INFO_PATIENCE, events.direct_get(seq)).await,
        Ok(Ok(_))
    )
}

/// A session's stored events, as a socket's relay and REST read them.
pub trait StoredEvents {
    /// Finds the session's last event and checks `after_seq` against the
    /// stream: beyond the stream's end is `bad_request`; before its start
    /// is `expired`.
    fn position(
        &self,
        after_seq: Option<u64>,
    ) -> impl Future<Output = Result<Position, ApiError>> + Send;

    /// The session's stored events with `from <= seq <= until`, as frames,
    /// at most `limit` of them (a page; the next starts after the last).
    /// May come back short (a replica behind); callers that know a sequence
    /// exists check for it.
    fn frames(
        &self,
        from: u64,
        until: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(u64, String)>, ApiError>> + Send;

    /// What a client gets when its `after_seq` is older than the replay
    /// window: the `replay_expired` error, then the finished turns to
    /// rebuild from.
    fn expired_notice(
        &self,
        last_seq: u64,
    ) -> impl Future<Output = Result<[ControlFrame; 2], ApiError>> + Send;
}

/// One session's events in `CHAT_EVENTS` and turns in `CHAT_HISTORY`.
#[derive(Clone)]
pub struct SessionEvents {
    state: AppState,
    session: SessionId,
}

impl SessionEvents {
    pub fn new(state: AppState, session: SessionId) -> Self {
        Self { state, session }
    }

    /// The session's last event as the events stream's leader holds it (0:
    /// none): every event acknowledged before the call is at or below it.
    pub async fn last_seq_at_leader(&self) -> Result<u64, ApiError> {
        let subject = subjects::events(self.session);
        let state = &self.state;
        state
            .retry_api_call(|| async {
                stored::last_seq_at_leader(&state.layout.events, &subject)
                    .await
                    .map_err(ApiError::nats)
            })
            .await
    }
}

/// How long a read waits for the replicas to hold an event the leader
/// already does, before the caller is told to try again (503).
pub const CATCH_UP_PATIENCE: Duration = Duration::from_secs(5);

/// The session's events `from..=until` (a page of at most `limit`), read
/// again until they reach `stored_last`, the last event the leader holds: a
/// replica behind answers with an older tail, and a reader that asked after
/// an event was acknowledged must not miss it. A full page needs nothing
/// more (the next page goes on from it). A replica still behind after
/// `patience` is `Unavailable`, never a short answer.
pub async fn frames_through(
    events: &impl StoredEvents,
    from: u64,
    until: u64,
    stored_last: u64,
    limit: usize,
    patience: Duration,
) -> Result<Vec<(u64, String)>, ApiError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(20);
    loop {
        let frames = events.frames(from, until.max(stored_last), limit).await?;
        let reached = frames.len() >= limit
            || stored_last < from
            || frames.last().is_some_and(|(seq, _)| *seq >= stored_last);
        if reached {
            return Ok(frames);
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(ApiError::Unavailable(format!(
                "the replicas answering reads hold the session's events up to {:?}, its leader up to {stored_last}",
                frames.last().map(|(seq, _)| *seq)
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

impl StoredEvents for SessionEvents {
    async fn position(&self, after_seq: Option<u64>) -> Result<Position, ApiError> {
        let subject = subjects::events(self.session);
        let state = &self.state;
        let last_seq = state
            .retry_api_call(|| async {
                stored::last_seq(&state.layout.events, &subject)
                    .await
                    .map_err(ApiError::nats)
            })
            .await?;
        let Some(after) = after_seq else {
            return Ok(Position {
                last_seq,
                expired: false,
                first_available: 1,
            });
        };
        let last_seq = if state.test_hooks.stale_replay_read() {
            last_seq.saturating_sub(1)
        } else {
            last_seq
        };
        let bounds = state
            .retry_api_call(|| state.stream_bounds.for_after(&state.layout.events, after))
            .await?;
        let stream_last = bounds.last.max(last_seq);
        if after > stream_last {
            return Err(ApiError::BadRequest(format!(
                "after_seq {after} is beyond the end of the stream ({stream_last})"
            )));
        }
        let first_available = bounds.first.max(1);
        Ok(Position {
            last_seq,
            expired: after.saturating_add(1) < first_available,
            first_available,
        })
    }

    async fn frames(
        &self,
        from: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, ApiError> {
        if until < from {
            return Ok(Vec::new());
        }
        let subject = subjects::events(self.session);
        let state = &self.state;
        let stored = state
            .retry_api_call(|| async {
                stored::read_range(
                    &state.client,
                    &state.layout.events,
                    &subject,
                    from,
                    until,
                    limit,
                )
                .await
                .map_err(ApiError::nats)
            })
            .await?;
        let frames: Vec<(u64, String)> = stored
            .into_iter()
            .filter_map(|s| with_seq(&s.payload, s.seq).map(|f| (s.seq, f)))
            .collect();
        crate::metrics::replayed(frames.len());
        Ok(frames)
    }

    async fn expired_notice(&self, last_seq: u64) -> Result<[ControlFrame; 2], ApiError> {
        let state = &self.state;
        let turns = state
            .retry_api_call(|| async {
                stored::read_turns(
                    &state.client,
                    &state.layout.history,
                    self.session,
                    HISTORY_TURNS,
                )
                .await
                .map_err(ApiError::nats)
            })
            .await?;
        crate::metrics::error(ErrorCode::ReplayExpired);
        Ok([
            ControlFrame::error(
                ErrorCode::ReplayExpired,
                "events after after_seq are no longer kept; the conversation's history follows",
            ),
            ControlFrame::History { turns, last_seq },
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session's events behind replicas: each read is answered by the
    /// next view in `views` (the last one repeats), holding the events up
    /// to that sequence.
    struct Replicas {
        stored: Vec<u64>,
        views: Mutex<Vec<u64>>,
    }

    impl Replicas {
        fn answering(stored: &[u64], views: &[u64]) -> Self {
            Self {
                stored: stored.to_vec(),
                views: Mutex::new(views.iter().rev().copied().collect()),
            }
        }
    }

    impl StoredEvents for Replicas {
        async fn position(&self, _after_seq: Option<u64>) -> Result<Position, ApiError> {
            unreachable!("frames_through reads frames only")
        }

        async fn frames(
            &self,
            from: u64,
            until: u64,
            limit: usize,
        ) -> Result<Vec<(u64, String)>, ApiError> {
            let mut views = self.views.lock().unwrap();
            let view = if views.len() > 1 {
                views.pop().unwrap()
            } else {
                views[0]
            };
            Ok(self
                .stored
                .iter()
                .filter(|&&seq| seq >= from && seq <= until.min(view))
                .take(limit)
                .map(|&seq| (seq, seq.to_string()))
                .collect())
        }

        async fn expired_notice(&self, _last_seq: u64) -> Result<[ControlFrame; 2], ApiError> {
            unreachable!("frames_through reads frames only")
        }
    }

    fn seqs(frames: &[(u64, String)]) -> Vec<u64> {
        frames.iter().map(|(seq, _)| *seq).collect()
    }

    const PATIENCE: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn a_read_answered_by_a_replica_behind_is_read_again_until_it_reaches_the_leaders_last() {
        // The leader holds 9; the first replica to answer only 5, the next 9.
        let replicas = Replicas::answering(&[2, 5, 7, 9], &[5, 9]);
        let frames = frames_through(&replicas, 1, 5, 9, 100, PATIENCE)
            .await
            .unwrap();
        assert_eq!(seqs(&frames), [2, 5, 7, 9]);
    }

    #[tokio::test]
    async fn a_replica_that_stays_behind_is_unavailable_never_a_short_answer() {
        let replicas = Replicas::answering(&[2, 5, 7, 9], &[5]);
        let refused = frames_through(&replicas, 1, 9, 9, 100, PATIENCE).await;
        assert!(
            matches!(refused, Err(ApiError::Unavailable(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_full_page_or_nothing_wanted_needs_no_second_read() {
        // A page of two stops at 5 even though the leader holds 9.
        let replicas = Replicas::answering(&[2, 5, 7, 9], &[5]);
        let frames = frames_through(&replicas, 1, 9, 9, 2, PATIENCE)
            .await
            .unwrap();
        assert_eq!(seqs(&frames), [2, 5]);
        // After the leader's last: an empty page is the whole answer.
        let frames = frames_through(&replicas, 10, 9, 9, 100, PATIENCE)
            .await
            .unwrap();
        assert!(frames.is_empty());
        // A session with no events.
        let empty = Replicas::answering(&[], &[0]);
        assert!(frames_through(&empty, 1, 0, 0, 100, PATIENCE)
            .await
            .unwrap()
            .is_empty());
    }
}
