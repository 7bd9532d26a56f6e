//! Regenerating the session's last answer: a new message, with its own id,
//! that asks the replaced message's question again and names it in
//! `replaces`. Only the session's last question may be replaced, once its
//! answer has ended; the new message then counts against the in-flight limit
//! and is stored and queued exactly as a chat ([`chat::queue`]), so a retry
//! with the same `message_id` gets the same `seq` back.

use std::time::Duration;

use protocol::records::SessionRecord;
use protocol::sessions::{self, SessionStoreError};
use protocol::{now_ms, stored, MessageId, SessionId};
use tokio::time::Instant;

use crate::app::AppState;
use crate::chat::{self, Accepted, Question};
use crate::error::ApiError;
use crate::replay::HISTORY_TURNS;

/// A regenerate as a client sends it.
#[derive(Debug, Clone, Default)]
pub struct RegenerateInput {
    pub message_id: Option<MessageId>,
    /// The message whose answer to replace; `None` = the session's last question.
    pub replaces: Option<MessageId>,
    pub model: Option<String>,
}

/// What a regenerate replaces, decided from the session record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    replaces: MessageId,
    /// The replaced answer's terminal event is being stored: its turn is
    /// about to be recorded (a regenerate sent the moment `done` arrives).
    ending: bool,
    /// The same regenerate again (a retry): stored and queued already.
    retry: bool,
}

/// How long a regenerate sent the moment the replaced answer ended waits for
/// that answer's turn to be recorded (the worker writes it right after the
/// terminal event, in milliseconds unless NATS is in trouble).
const TURN_WAIT: Duration = Duration::from_secs(2);
const TURN_POLL: Duration = Duration::from_millis(25);

/// Queues a new answer to the session's last question.
pub async fn regenerate(
    state: &AppState,
    session: SessionId,
    input: RegenerateInput,
) -> Result<Accepted, ApiError> {
    chat::validate_model(state, input.model.as_deref())?;
    let message_id = input.message_id.unwrap_or_default();
    let record = sessions::load(&state.layout.sessions, session)
        .await
        .map_err(ApiError::nats)?
        .ok_or_else(unknown_session)?
        .record;
    let target = choose_target(&record, message_id, input.replaces)?;
    let question = replaced_question(state, session, target).await?;

    let limit = state.config.max_in_flight_per_session;
    let now = now_ms();
    let max_age = state.config.layout.in_flight_max_age_ms();
    let admitted = sessions::update(&state.layout.sessions, session, |record| {
        record.expire_active(now, max_age);
        // The record may have moved since it was read: decide again.
        let again = choose_target(record, message_id, input.replaces)?;
        if again.replaces != target.replaces {
            return Err(ApiError::BadRequest(
                "the session's last question changed; regenerate again".into(),
            ));
        }
        if again.retry {
            return Ok(false);
        }
        if record.in_flight() >= limit {
            return Err(ApiError::RateLimited(format!(
                "at most {limit} messages may be in flight per session"
            )));
        }
        record.admit(message_id, now, Some(target.replaces));
        Ok(true)
    })
    .await;
    match admitted {
        Ok(Ok(admitted)) => {
            chat::admit_for_owner(state, admitted.owner.as_ref(), session, message_id, None).await?
        }
        Ok(Err(refusal)) => return Err(refusal),
        Err(SessionStoreError::NotFound) => return Err(unknown_session()),
        Err(e) => return Err(ApiError::nats(e)),
    }
    chat::queue(
        state,
        session,
        Question {
            message_id,
            content: question,
            model: input.model,
            replaces: Some(target.replaces),
            accepted_at_ms: now,
        },
    )
    .await
}

fn unknown_session() -> ApiError {
    ApiError::NotFound("unknown or expired session".into())
}

/// What `message_id` may replace, or why it may not (docs/PROTOCOL.md,
/// `POST /api/regenerate`). Pure, so the admission can run it again on the
/// record it is about to change.
fn choose_target(
    record: &SessionRecord,
    message_id: MessageId,
    requested: Option<MessageId>,
) -> Result<Target, ApiError> {
    let last = record.last_question.as_ref();
    let known = |id: MessageId| record.is_active(id) || record.is_finished(id);
    if let Some(last) = last.filter(|l| l.message_id == message_id) {
        // This id is the session's last question: a retry of the regenerate
        // that made it so, or an id that was used for a chat.
        let Some(replaces) = last.replaces else {
            return Err(ApiError::BadRequest(format!(
                "message {message_id} is a question of this session, not a regeneration"
            )));
        };
        if requested.is_some_and(|r| r != replaces) {
            return Err(ApiError::BadRequest(format!(
                "message {message_id} already replaces {replaces}"
            )));
        }
        return Ok(Target {
            replaces,
            ending: false,
            retry: known(message_id),
        });
    }
    if known(message_id) {
        return Err(ApiError::BadRequest(format!(
            "message {message_id} is already used in this session; a regenerate needs a new id"
        )));
    }
    let Some(last) = last else {
        return Err(ApiError::NotFound(
            "the session has no question to regenerate".into(),
        ));
    };
    let replaces = requested.unwrap_or(last.message_id);
    if replaces != last.message_id {
        return Err(if known(replaces) {
            ApiError::BadRequest(format!(
                "only the session's last question ({}) can be regenerated",
                last.message_id
            ))
        } else {
            ApiError::NotFound(format!("no message {replaces} in this session"))
        });
    }
    let ending = record.is_ending(replaces);
    if record.is_active(replaces) && !ending {
        return Err(ApiError::BadRequest(format!(
            "message {replaces} is still being answered; wait for its end or cancel it"
        )));
    }
    if !ending && !record.is_finished(replaces) {
        // Refused before it was queued: it has no answer to replace.
        return Err(ApiError::NotFound(format!(
            "message {replaces} has no answer to regenerate; send it again"
        )));
    }
    Ok(Target {
        replaces,
        ending,
        retry: false,
    })
}

/// The replaced message's question, from its turn in the history (events
/// age out of the replay window within the hour; turns stay for days).
async fn replaced_question(
    state: &AppState,
    session: SessionId,
    target: Target,
) -> Result<String, ApiError> {
    let deadline = Instant::now() + TURN_WAIT;
    loop {
        let turn = stored::find_turn(
            &state.client,
            &state.layout.history,
            session,
            target.replaces,
            HISTORY_TURNS,
        )
        .await
        .map_err(ApiError::nats)?;
        match turn {
            Some(turn) => return Ok(turn.user),
            // The answer just ended: its turn is on its way.
            None if target.ending && Instant::now() < deadline => {
                tokio::time::sleep(TURN_POLL).await;
            }
            None if target.ending => {
                return Err(ApiError::nats(format!(
                    "the turn of {} was not recorded within {TURN_WAIT:?}",
                    target.replaces
                )))
            }
            None => {
                return Err(ApiError::NotFound(format!(
                    "message {} is no longer in the session's history",
                    target.replaces
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::SessionToken;

    use super::*;

    fn record() -> SessionRecord {
        SessionRecord::new(SessionToken::generate().hash(), "n".into(), 0)
    }

    fn asked(record: &mut SessionRecord, replaces: Option<MessageId>) -> MessageId {
        let id = MessageId::new();
        record.admit(id, 0, replaces);
        id
    }

    fn code(result: Result<Target, ApiError>) -> protocol::ErrorCode {
        result.expect_err("refused").code()
    }

    #[test]
    fn only_the_last_finished_question_is_replaced() {
        use protocol::ErrorCode::{BadRequest, NotFound};
        let mut r = record();
        let new = MessageId::new();
        assert_eq!(
            code(choose_target(&r, new, None)),
            NotFound,
            "nothing asked yet"
        );
        let first = asked(&mut r, None);
        r.finish(first);
        let last = asked(&mut r, None);
        assert_eq!(
            code(choose_target(&r, new, None)),
            BadRequest,
            "still running"
        );
        r.mark_ending(last);
        let ending = choose_target(&r, new, None).unwrap();
        assert!(ending.ending && !ending.retry && ending.replaces == last);
        r.finish(last);
        let t = choose_target(&r, new, None).unwrap();
        assert_eq!((t.replaces, t.ending, t.retry), (last, false, false));
        assert_eq!(choose_target(&r, new, Some(last)).unwrap(), t);
        assert_eq!(
            code(choose_target(&r, new, Some(first))),
            BadRequest,
            "older"
        );
        assert_eq!(
            code(choose_target(&r, new, Some(MessageId::new()))),
            NotFound
        );
        assert_eq!(
            code(choose_target(&r, first, None)),
            BadRequest,
            "id reused"
        );
        assert_eq!(
            code(choose_target(&r, last, None)),
            BadRequest,
            "a chat's id"
        );
    }

    #[test]
    fn a_regeneration_is_retried_and_then_replaced_in_turn() {
        use protocol::ErrorCode::BadRequest;
        let mut r = record();
        let question = asked(&mut r, None);
        r.finish(question);
        let regen = asked(&mut r, Some(question));
        let retry = choose_target(&r, regen, None).unwrap();
        assert_eq!((retry.replaces, retry.retry), (question, true));
        assert_eq!(choose_target(&r, regen, Some(question)).unwrap(), retry);
        assert_eq!(code(choose_target(&r, regen, Some(regen))), BadRequest);
        // Its job refused by a full queue: a retry is admitted again.
        r.active.clear();
        assert!(!choose_target(&r, regen, None).unwrap().retry);
        // Finished, it is the one the next regenerate replaces.
        r.finish(regen);
        let next = choose_target(&r, MessageId::new(), None).unwrap();
        assert_eq!(next.replaces, regen);
        assert_eq!(
            code(choose_target(&r, MessageId::new(), Some(question))),
            BadRequest
        );
    }
}
