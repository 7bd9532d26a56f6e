//! Submitting a chat and cancelling one, shared by the WebSocket and REST
//! paths (the semantics agreed with the worker): the session record bounds
//! what is in flight, and the user-message echo and the job are both
//! published with `Nats-Msg-Id` = message id, so a retried send gets the same
//! `seq` back and is never generated twice.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage;
use async_nats::HeaderMap;
use protocol::records::SessionRecord;
use protocol::sessions::{self, SessionStoreError, Versioned};
use protocol::{now_ms, subjects, ChatRequest, ErrorCode, Event, MessageId, SessionId};

use crate::app::AppState;
use crate::error::ApiError;

/// How long an accepted message may count as "in flight" in the session
/// record, whatever happened to its job: a job lost outside the work-queue's
/// guarantees must not block its session for ever.
pub(crate) const ACTIVE_MAX_AGE_MS: u64 = 30 * 60 * 1000;

/// A chat as a client sends it.
#[derive(Debug, Clone)]
pub struct ChatInput {
    pub message_id: Option<MessageId>,
    pub content: String,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    pub message_id: MessageId,
    /// Sequence of the user-message event in `CHAT_EVENTS`.
    pub seq: u64,
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
///
/// Every round trip here is part of the time to the first chunk, so the
/// admission is decided on the record as read, and its write (a
/// compare-and-set on that revision) goes out together with the question's
/// echo. Nothing is stored for a refused question: the limit is checked
/// before either write. When the compare-and-set loses to another writer
/// (usually the worker finishing the previous answer), the admission is
/// decided again on the fresh record; if that refuses, the echo stored
/// meanwhile gets its refusal stored after it, as a full work-queue's does.
pub async fn submit(
    state: &AppState,
    session: SessionId,
    input: ChatInput,
) -> Result<Accepted, ApiError> {
    validate(state, &input)?;
    let message_id = input.message_id.unwrap_or_default();
    let limit = state.config.max_in_flight_per_session;
    let now = now_ms();
    let admit = |record: &mut SessionRecord| {
        record.expire_active(now, ACTIVE_MAX_AGE_MS);
        if record.is_active(message_id) || record.is_finished(message_id) {
            // A retry: publish again below, JetStream deduplicates and
            // answers with the first sequence.
            return Ok(false);
        }
        if record.in_flight() >= limit {
            return Err(InFlightLimit);
        }
        record.admit(message_id, now, None);
        Ok(true)
    };
    let refusal = |e: SessionStoreError| match e {
        SessionStoreError::NotFound => ApiError::NotFound("unknown or expired session".into()),
        e => ApiError::nats(e),
    };
    let at_limit = || {
        ApiError::RateLimited(format!(
            "at most {limit} messages may be in flight per session"
        ))
    };
    let question = Question {
        message_id,
        content: input.content,
        model: input.model,
        replaces: None,
        accepted_at_ms: now,
    };
    let store = &state.layout.sessions;
    let Versioned {
        mut record,
        revision,
    } = sessions::load(store, session)
        .await
        .map_err(refusal)?
        .ok_or(SessionStoreError::NotFound)
        .map_err(refusal)?;
    match admit(&mut record) {
        Err(InFlightLimit) => return Err(at_limit()),
        Ok(false) => return queue(state, session, question).await,
        Ok(true) => {}
    }
    let value = serde_json::to_vec(&record).map_err(ApiError::nats)?;
    let write = store.update(subjects::session_key(session), value.into(), revision);
    let (written, echoed) = tokio::join!(write, store_echo(state, session, &question));
    if let Err(e) = written {
        let error = if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
            match sessions::update(store, session, admit).await {
                Ok(Ok(_)) => None,
                Ok(Err(InFlightLimit)) => Some(at_limit()),
                Err(e) => Some(refusal(e)),
            }
        } else {
            Some(ApiError::nats(e))
        };
        if let Some(error) = error {
            if echoed.is_ok() {
                store_refusal(state, session, message_id, error.code(), &error).await;
            }
            return Err(error);
        }
    }
    let seq = match echoed {
        Ok(seq) => seq,
        Err(e) => {
            forget_refused(state, session, message_id).await;
            return Err(ApiError::nats(e));
        }
    };
    queue_job(state, session, question, seq).await
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
    let seq = match store_echo(state, session, &question).await {
        Ok(seq) => seq,
        Err(e) => {
            forget_refused(state, session, message_id).await;
            return Err(ApiError::nats(e));
        }
    };
    queue_job(state, session, question, seq).await
}

/// Stores the question's echo (deduplicated on the message id); its
/// sequence is the `seq` the client is told.
async fn store_echo(
    state: &AppState,
    session: SessionId,
    question: &Question,
) -> Result<u64, PublishError> {
    let echo = Event::UserMessage {
        message_id: question.message_id,
        content: question.content.clone(),
        replaces: question.replaces,
    };
    publish(
        state,
        subjects::events(session),
        echo.to_payload(),
        Some((session, question.message_id)),
        HeaderMap::new(),
    )
    .await
}

/// Queues the job of a question whose echo is stored at `seq`.
async fn queue_job(
    state: &AppState,
    session: SessionId,
    question: Question,
    seq: u64,
) -> Result<Accepted, ApiError> {
    let message_id = question.message_id;
    let request = ChatRequest {
        session_id: session,
        message_id,
        content: question.content,
        user_seq: seq,
        replaces: question.replaces,
        model: question.model,
        accepted_at_ms: question.accepted_at_ms,
    };
    let payload = serde_json::to_vec(&request).map_err(ApiError::nats)?;
    let mut headers = HeaderMap::new();
    telemetry::trace_context::inject(&mut headers);
    let queued = publish(
        state,
        subjects::requests(session),
        payload.into(),
        Some((session, message_id)),
        headers,
    )
    .await;
    if let Err(e) = queued {
        return Err(refused(state, session, message_id, e).await);
    }
    Ok(Accepted { message_id, seq })
}

/// The work-queue did not take the job although its echo is stored: the
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
    store_refusal(state, session, message_id, code, &error).await;
    forget_refused(state, session, message_id).await;
    error
}

/// Stores why a question whose echo is stored gets no answer, after it.
async fn store_refusal(
    state: &AppState,
    session: SessionId,
    message_id: MessageId,
    code: ErrorCode,
    error: &ApiError,
) {
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
) -> Result<u64, PublishError> {
    let mut message = PublishMessage::build().payload(payload);
    if let Some((session, id)) = dedup {
        message = message.message_id(subjects::dedup_id(session, id));
    }
    for (name, values) in headers.iter() {
        for value in values {
            message = message.header(name.clone(), value.clone());
        }
    }
    let ack = state.js.send_publish(subject, message).await?.await?;
    Ok(ack.sequence)
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
