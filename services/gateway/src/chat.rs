//! Submitting a chat and cancelling one, shared by the WebSocket and REST
//! paths (the semantics agreed with the worker): the session record bounds
//! what is in flight, and the user-message echo and the job are both
//! published with `Nats-Msg-Id` = message id, so a retried send gets the same
//! `seq` back and is never generated twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::HeaderMap;
use protocol::records::RECENT_MESSAGES_KEPT;
use protocol::sessions::{self, SessionStoreError};
use protocol::{now_ms, stored, subjects, ChatRequest, ErrorCode, Event, MessageId, SessionId};

use crate::app::AppState;
use crate::error::ApiError;

/// A chat as a client sends it.
#[derive(Debug, Clone)]
pub struct ChatInput {
    pub message_id: Option<MessageId>,
    pub content: String,
    pub model: Option<String>,
    /// The session's record as this request's token check read it a moment
    /// ago (REST and the AI SDK's POST), so admission does not read it
    /// again; `None` where the record was read long before (a socket's).
    pub checked_record: Option<sessions::Versioned>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    pub message_id: MessageId,
    /// Sequence of the user-message event in `CHAT_EVENTS`.
    pub seq: u64,
    /// The user-message event as stored at `seq`, when this call stored it
    /// (none for a retry: stored before, JetStream answered a duplicate).
    #[serde(skip)]
    pub echo: Option<bytes::Bytes>,
}

/// Checks a chat before anything is stored. Control characters other than
/// newline, carriage return and tab (C0) are refused: they are never part of
/// a question and confuse terminals and logs downstream.
fn validate(state: &AppState, input: &ChatInput) -> Result<(), ApiError> {
    if input.content.trim().is_empty() {
        return Err(ApiError::BadRequest("content is empty".into()));
    }
    if input.content.len() > state.config.max_prompt_bytes {
        return Err(ApiError::TooLarge(format!(
            "content is {} bytes; at most {} are accepted",
            input.content.len(),
            state.config.max_prompt_bytes
        )));
    }
    if input
        .content
        .chars()
        .any(|c| c < '\u{20}' && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::BadRequest(
            "content has control characters (only \\n, \\r and \\t are allowed)".into(),
        ));
    }
    validate_model(state, input.model.as_deref())
}

/// A `model` the gateway does not list is refused before anything is stored.
pub(crate) fn validate_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    if let Some(model) = model {
        if !state.config.allows_model(model) {
            let shown: String = model.chars().take(64).collect();
            return Err(ApiError::BadRequest(format!("unknown model {shown:?}")));
        }
    }
    Ok(())
}

/// The session reached its in-flight limit.
struct InFlightLimit;

/// Queues a chat. Idempotent on `message_id`: the same id again returns the
/// same `seq` and generates nothing new.
pub async fn submit(
    state: &AppState,
    session: SessionId,
    input: ChatInput,
) -> Result<Accepted, ApiError> {
    validate(state, &input)?;
    let message_id = input.message_id.unwrap_or_default();
    let limit = state.config.max_in_flight_per_session;
    let now = now_ms();
    // An in-flight entry lives exactly as long as JetStream deduplicates
    // its message (`in_flight_max_age_ms`), so publishing an active
    // message again can never store or queue it twice.
    let max_age = state.config.layout.in_flight_max_age_ms();
    let settled = AtomicBool::new(false);
    // Taken by the first try only: a try asked again after a lost
    // connection reads the record afresh.
    let mut checked_record = input.checked_record;
    let admission = || {
        let known = checked_record.take();
        sessions::update_from(&state.layout.sessions, session, known, |record| {
            let expired_before = record.expired.len();
            record.expire_active(now, max_age);
            settled.store(
                record.is_finished(message_id) || record.is_expired(message_id),
                Ordering::Relaxed,
            );
            if settled.load(Ordering::Relaxed) {
                // Possibly older than the dedup window: never published again.
                return Ok(record.expired.len() != expired_before);
            }
            if record.is_active(message_id) {
                // A retry: publish again below, JetStream deduplicates and
                // answers with the first sequence.
                return Ok(false);
            }
            if record.in_flight() >= limit {
                return Err(InFlightLimit);
            }
            record.admit(message_id, now, None);
            Ok(true)
        })
    };
    // Compare-and-set: asked again after a lost connection, a first try
    // that was stored is seen as this message in flight (a retry).
    let admitted = state
        .retry_when_lost(admission)
        .await
        .map_err(ApiError::nats)?;
    match admitted {
        Ok(Ok(_)) if settled.load(Ordering::Relaxed) => {
            return retried_late(state, session, message_id).await
        }
        Ok(Ok(admitted)) => {
            admit_for_owner(
                state,
                admitted.owner.as_ref(),
                session,
                message_id,
                Some(&input.content),
            )
            .await?
        }
        Ok(Err(InFlightLimit)) => {
            return Err(ApiError::RateLimited(format!(
                "at most {limit} messages may be in flight per session"
            )))
        }
        Err(SessionStoreError::NotFound) => {
            return Err(ApiError::NotFound("unknown or expired session".into()))
        }
        Err(e) => return Err(ApiError::nats(e)),
    }

    queue(
        state,
        session,
        Question {
            message_id,
            content: input.content,
            model: input.model,
            replaces: None,
            accepted_at_ms: now,
        },
    )
    .await
}

/// Counts an admitted message against its session owner's quota (`jwt`
/// mode); refused there, it stops counting in its session too. An
/// anonymous session has no owner and no per-user quota. A retry of a
/// message already counted passes.
pub(crate) async fn admit_for_owner(
    state: &AppState,
    owner: Option<&protocol::UserKey>,
    session: SessionId,
    message_id: MessageId,
    question: Option<&str>,
) -> Result<(), ApiError> {
    let Some(owner) = owner else {
        return Ok(());
    };
    let counted = crate::users::admit_answer(state, owner, session, message_id, question).await;
    if counted.is_err() {
        forget_refused(state, session, message_id).await;
    }
    counted
}

/// A retry of a message that finished, or whose in-flight entry expired:
/// JetStream may no longer deduplicate it, so nothing is published. Its
/// turn gives the `seq` of its question; without a turn (it never finished)
/// the id counts as used.
async fn retried_late(
    state: &AppState,
    session: SessionId,
    message_id: MessageId,
) -> Result<Accepted, ApiError> {
    let client = state.js.client();
    let turn = state
        .retry_api_call(|| async {
            stored::find_turn(
                &client,
                &state.layout.history,
                session,
                message_id,
                RECENT_MESSAGES_KEPT,
            )
            .await
            .map_err(ApiError::nats)
        })
        .await?;
    match turn {
        Some(turn) => Ok(Accepted {
            message_id,
            seq: turn.user_seq,
            echo: None,
        }),
        None => Err(ApiError::BadRequest(format!(
            "message {message_id} was accepted earlier and is not queued again (a retry \
             is recognised for {} s): send a new question with a new message_id",
            state.config.layout.dedup_window_secs
        ))),
    }
}

/// An admitted question, ready to be stored and queued.
pub(crate) struct Question {
    pub(crate) message_id: MessageId,
    pub(crate) content: String,
    pub(crate) model: Option<String>,
    /// Set on a regeneration: the message whose answer it replaces.
    pub(crate) replaces: Option<MessageId>,
    pub(crate) accepted_at_ms: u64,
}

/// Stores the question's echo, then queues its job, both deduplicated on
/// the message id. The message is in the session record's `active` list
/// already; a refusal takes it out again.
pub(crate) async fn queue(
    state: &AppState,
    session: SessionId,
    question: Question,
) -> Result<Accepted, ApiError> {
    let message_id = question.message_id;
    let echo = Event::UserMessage {
        message_id,
        content: question.content.clone(),
        replaces: question.replaces,
    };
    let echo = echo.to_payload();
    let (seq, echo) = match publish(
        state,
        subjects::events(session),
        echo.clone(),
        Some((session, message_id)),
        HeaderMap::new(),
    )
    .await
    {
        Ok(ack) => (ack.sequence, (!ack.duplicate).then_some(echo)),
        Err(e) => {
            forget_refused(state, session, message_id).await;
            return Err(ApiError::nats(e));
        }
    };
    let request = ChatRequest {
        session_id: session,
        message_id,
        content: question.content,
        user_seq: seq,
        replaces: question.replaces,
        model: question.model,
        accepted_at_ms: question.accepted_at_ms,
        extra: Default::default(),
    };
    let payload = serde_json::to_vec(&request).map_err(ApiError::nats)?;
    let mut headers = HeaderMap::new();
    telemetry::trace_context::inject(&mut headers);
    let queued = publish_job(
        state,
        subjects::requests(session),
        payload.into(),
        (session, message_id),
        headers,
    )
    .await;
    match queued {
        Ok(()) => Ok(Accepted {
            message_id,
            seq,
            echo,
        }),
        Err(JobNotQueued {
            error: e,
            maybe_queued: true,
        }) => {
            // The job may be queued (only its ack was lost): storing a
            // refusal now could put an `error` before a whole answer. The
            // message stays in flight; a retry with the same id publishes
            // again, deduplicated, and the worker that answers it (or the
            // in-flight entry's expiry) ends it.
            tracing::warn!(error = %e, %message_id, "queueing a job: outcome unknown");
            Err(ApiError::nats(e))
        }
        Err(JobNotQueued { error, .. }) => Err(refused(state, session, message_id, error).await),
    }
}

/// A job publish that did not end in an ack.
struct JobNotQueued {
    /// The last try's error.
    error: PublishError,
    /// Whether any try may have stored the job (its ack never came): then
    /// a later "no" (no stream leader yet) does not mean "not queued".
    maybe_queued: bool,
}

/// Tries of a job publish whose outcome is unknown (no ack), each with the
/// same `Nats-Msg-Id`: a job that was stored is answered as a duplicate
/// with its first sequence, never queued twice.
const JOB_PUBLISH_TRIES: usize = 3;
/// Pause between those tries, so a reconnecting client is connected again.
const JOB_PUBLISH_RETRY: Duration = Duration::from_millis(250);

/// Queues a job, asking again while the outcome is unknown.
async fn publish_job(
    state: &AppState,
    subject: String,
    payload: bytes::Bytes,
    (session, message_id): (SessionId, MessageId),
    headers: HeaderMap,
) -> Result<(), JobNotQueued> {
    let mut tries = 0;
    let mut maybe_queued = false;
    loop {
        tries += 1;
        let result = if tries > 1 {
            state.test_hooks.leaderless_job_retry()
        } else {
            Ok(())
        };
        let result = match result {
            Ok(()) => publish(
                state,
                subject.clone(),
                payload.clone(),
                Some((session, message_id)),
                headers.clone(),
            )
            .await
            .and_then(|_| state.test_hooks.lose_job_ack()),
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => return Ok(()),
            Err(e) if is_uncertain(&e) && tries < JOB_PUBLISH_TRIES => {
                maybe_queued = true;
                tracing::info!(error = %e, %message_id, tries, "no ack for a job; publishing it again");
                tokio::time::sleep(JOB_PUBLISH_RETRY).await;
            }
            Err(error) => {
                return Err(JobNotQueued {
                    maybe_queued: maybe_queued || is_uncertain(&error),
                    error,
                })
            }
        }
    }
}

/// Whether a publish may have been stored although it failed: no ack came
/// (the server may have stored it and the ack was lost) or the connection
/// broke while it was sent.
fn is_uncertain(e: &PublishError) -> bool {
    matches!(
        e.kind(),
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
    ) || protocol::conflicts::is_duplicate_in_process(e)
}

/// The work-queue refused the job although its echo is stored: the
/// refusal is stored after the echo, so every client (and every replay)
/// sees why this question got no answer, and the message stops counting
/// against the session's limit.
async fn refused(
    state: &AppState,
    session: SessionId,
    message_id: MessageId,
    e: PublishError,
) -> ApiError {
    let (code, error) = if is_full(&e) {
        (
            ErrorCode::Overloaded,
            ApiError::Overloaded("the service is at capacity; try again shortly".into()),
        )
    } else {
        (ErrorCode::Internal, ApiError::nats(&e))
    };
    tracing::warn!(error = %e, %message_id, "the work-queue refused a job");
    let refusal = Event::Error {
        message_id: Some(message_id),
        code,
        message: error.to_string(),
    };
    let stored = publish(
        state,
        subjects::events(session),
        refusal.to_payload(),
        None,
        HeaderMap::new(),
    )
    .await;
    if let Err(e) = stored {
        tracing::warn!(error = %e, "storing the refusal");
    }
    forget_refused(state, session, message_id).await;
    error
}

/// Whether the work-queue refused because it is full (discard-new limits:
/// JetStream error codes 10077 messages, 10078 bytes, both "maximum ...
/// exceeded"). Anything else (timeouts, a missing stream) is not overload.
fn is_full(e: &PublishError) -> bool {
    match e.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound => false,
        _ => {
            let text = e.to_string().to_ascii_lowercase();
            text.contains("maximum") || text.contains("exceeded")
        }
    }
}

async fn publish(
    state: &AppState,
    subject: String,
    payload: bytes::Bytes,
    dedup: Option<(SessionId, MessageId)>,
    headers: HeaderMap,
) -> Result<PublishAck, PublishError> {
    let mut message = PublishMessage::build().payload(payload);
    if let Some((session, id)) = dedup {
        message = message.message_id(subjects::dedup_id(session, id));
    }
    for (name, values) in headers.iter() {
        for value in values {
            message = message.header(name.clone(), value.clone());
        }
    }
    let stored = || async {
        state
            .js
            .send_publish(subject.clone(), message.clone())
            .await?
            .await
    };
    let started = tokio::time::Instant::now();
    loop {
        let answered = if dedup.is_some() {
            // Deduplicated: sent again on the new connection, it is stored once.
            state.retry_when_lost(&stored).await.ok()
        } else {
            unless_connection_lost(state, stored()).await
        };
        match answered {
            // Nobody takes the stream's writes: the layout was verified at
            // start, so its replicas are electing a leader (a cluster node
            // was lost). Nothing was stored; a deduplicated write waits for
            // the new leader instead of refusing the question.
            Some(Err(e))
                if e.kind() == PublishErrorKind::StreamNotFound
                    && dedup.is_some()
                    && started.elapsed() + LEADERLESS_RETRY < LEADERLESS_PATIENCE =>
            {
                tracing::debug!("no stream leader; publishing again");
                tokio::time::sleep(LEADERLESS_RETRY).await;
            }
            // The same message id is still being stored by an earlier try
            // (a cluster's proposal in flight): asked again shortly, it is
            // answered as the duplicate it is, with the first sequence.
            // Refused instead, a queued job got an `error` before its answer
            // (`chatctl recovery --cluster --seed 2`).
            Some(Err(e))
                if dedup.is_some()
                    && protocol::conflicts::is_duplicate_in_process(&e)
                    && started.elapsed() + LEADERLESS_RETRY < LEADERLESS_PATIENCE =>
            {
                tracing::debug!(
                    "an earlier try of this message is still being stored; asking again"
                );
                tokio::time::sleep(LEADERLESS_RETRY).await;
            }
            Some(ack) => return ack,
            // Sent on a connection that is gone: stored or not, unknown.
            None => return Err(PublishError::new(PublishErrorKind::BrokenPipe)),
        }
    }
}

/// How long a deduplicated write waits for a stream without a leader:
/// nats-server's replicas wait 4–9 s for a lost leader before electing
/// another (not configurable), and an election can take a second round.
const LEADERLESS_PATIENCE: Duration = Duration::from_secs(20);
/// The pause between two tries of a write that found no stream leader.
const LEADERLESS_RETRY: Duration = Duration::from_millis(250);

/// Runs NATS round trips, or gives up (`None`) as soon as the connection
/// they started on is lost: their replies can no longer come, and waiting
/// for the request time-out would stall the client for seconds.
pub(crate) async fn unless_connection_lost<T>(
    state: &AppState,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let seen = state.connection.losses();
    tokio::select! {
        done = work => Some(done),
        _ = state.connection.lost_since(seen) => None,
    }
}

/// Takes a refused message out of the session's in-flight list, so it no
/// longer counts against the session's limit.
async fn forget_refused(state: &AppState, session: SessionId, message_id: MessageId) {
    let result = sessions::update(&state.layout.sessions, session, |record| {
        let before = record.active.len();
        record.active.retain(|m| m.message_id != message_id);
        Ok::<_, std::convert::Infallible>(record.active.len() != before)
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "forgetting a refused message");
    }
}

/// Stops an answer wherever it is: the KV flag stops a queued job from ever
/// starting, the core notice reaches the worker generating it. A finished
/// message is a no-op; an unknown one is `not_found`.
pub async fn cancel(
    state: &AppState,
    session: SessionId,
    message_id: MessageId,
) -> Result<(), ApiError> {
    let record = sessions::load(&state.layout.sessions, session)
        .await
        .map_err(ApiError::nats)?
        .ok_or_else(|| ApiError::NotFound("unknown or expired session".into()))?
        .record;
    if record.is_finished(message_id) {
        return Ok(());
    }
    if !record.is_active(message_id) {
        return Err(ApiError::NotFound(format!(
            "no message {message_id} in this session"
        )));
    }
    state
        .layout
        .sessions
        .put(subjects::cancel_flag_key(session, message_id), "1".into())
        .await
        .map_err(ApiError::nats)?;
    let notice = protocol::CancelNotice {
        attempt: None,
        message_id,
        claimed_by: None,
    };
    state
        .client
        .publish(subjects::cancel(session), notice.to_payload())
        .await
        .map_err(ApiError::nats)?;
    // Flushed so the worker hears it now, not at the next buffer flush.
    state.client.flush().await.map_err(ApiError::nats)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JetStream API error as the server sends it.
    fn api_error(err_code: u64) -> async_nats::jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 409,
            "err_code": err_code,
            "description": "refused"
        }))
        .expect("an API error")
    }

    #[test]
    fn a_duplicate_still_being_stored_is_an_unknown_outcome_not_a_refusal() {
        let in_process = PublishError::with_source(PublishErrorKind::Other, api_error(10158));
        assert!(is_uncertain(&in_process));
        let full = PublishError::with_source(
            PublishErrorKind::Other,
            "maximum messages exceeded (code 503, error code 10077)",
        );
        assert!(!is_uncertain(&full));
        assert!(is_full(&full));
    }

    /// JetStream refuses a write with 10023 "insufficient resources" when
    /// the server's store is at its `max_file_store`: the service is out of
    /// room, not the client too fast, so it is `503 internal` with
    /// `Retry-After`, never `429 overloaded` (PROTOCOL.md, "Errors").
    #[test]
    fn a_store_out_of_resources_is_internal_not_overload() {
        let no_room: async_nats::jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 503,
            "err_code": 10023,
            "description": "insufficient resources"
        }))
        .expect("an API error");
        let e = PublishError::with_source(PublishErrorKind::Other, no_room);
        assert!(!is_full(&e));
        assert!(!is_uncertain(&e));
        let (code, status) = {
            let api = ApiError::nats(&e);
            (api.code(), api.status())
        };
        assert_eq!(code, ErrorCode::Internal);
        assert_eq!(status.as_u16(), 503);
    }
}
