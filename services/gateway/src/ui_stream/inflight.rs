//! Which answer of a chat is in flight, and where its events begin: a
//! reloaded page asks for the answer "from its `start`", so the stream
//! replays it from its question's echo (or from its last `restart`, so a
//! superseded attempt is never shown), then carries on live.

use protocol::sessions;
use protocol::{MessageId, SessionId};
use serde::Deserialize;

use crate::app::AppState;
use crate::error::ApiError;
use crate::replay::{SessionEvents, StoredEvents};

/// The answer in flight and the point its replay starts after.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    pub(crate) message_id: MessageId,
    /// The sequence just before the first event to replay.
    pub(crate) start_after: u64,
    /// The question, as its echo stored it.
    pub(crate) question: String,
    /// Set on a regeneration: the message whose answer it replaces.
    pub(crate) replaces: Option<MessageId>,
}

/// Stored events read per request while looking back for a question's echo.
const SCAN_PAGE: usize = 1_000;
/// The first look back covers this many stream sequences; each further one
/// eight times more (the stream holds every session, so a session's events
/// are spread thin).
const FIRST_WINDOW: u64 = 1_024;

#[derive(Deserialize)]
struct Echo {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message_id: Option<MessageId>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    replaces: Option<MessageId>,
}

/// The session's answer in flight (`wanted`, or the latest accepted), or
/// `None` when nothing is running or its question is no longer stored.
pub(crate) async fn find(
    state: &AppState,
    session: SessionId,
    wanted: Option<MessageId>,
) -> Result<Option<InFlight>, ApiError> {
    let record = state
        .retry_api_call(|| async {
            sessions::load(&state.layout.sessions, session)
                .await
                .map_err(ApiError::nats)
        })
        .await?
        .ok_or(ApiError::Unauthorized)?
        .record;
    let active = record
        .active
        .iter()
        .filter(|m| wanted.is_none_or(|w| w == m.message_id))
        .max_by_key(|m| m.accepted_at_ms);
    let Some(active) = active else {
        return Ok(None);
    };
    let message_id = active.message_id;
    let events = SessionEvents::new(state.clone(), session);
    let last = events.position(None).await?.last_seq;
    let mut until = last;
    let mut window = FIRST_WINDOW;
    let mut last_restart: Option<u64> = None;
    while until > 0 {
        let from = until.saturating_sub(window).max(1);
        let mut next = from;
        let mut echo: Option<(u64, Echo)> = None;
        while next <= until {
            let page = events.frames(next, until, SCAN_PAGE).await?;
            let Some(&(end, _)) = page.last() else {
                break;
            };
            for (seq, frame) in &page {
                let Ok(event) = serde_json::from_str::<Echo>(frame) else {
                    continue;
                };
                if event.message_id != Some(message_id) {
                    continue;
                }
                match event.kind.as_str() {
                    "user_message" => echo = Some((*seq, event)),
                    "restart" => last_restart = last_restart.max(Some(*seq)),
                    _ => {}
                }
            }
            if page.len() < SCAN_PAGE {
                break;
            }
            next = end + 1;
        }
        if let Some((seq, echo)) = echo {
            // Only restarts after the echo are this answer's (a retried
            // question keeps its id and its echo).
            let start = last_restart.filter(|&r| r > seq).unwrap_or(seq);
            return Ok(Some(InFlight {
                message_id,
                start_after: start - 1,
                question: echo.content.unwrap_or_default(),
                replaces: echo.replaces,
            }));
        }
        until = from - 1;
        window = window.saturating_mul(8);
    }
    Ok(None)
}
