//! Submitting a chat and cancelling one, shared by the WebSocket and REST
//! paths (PREAMBLE "Semantics agreed"): the session record bounds what is in
//! flight, the user-message echo and the job are both published with
//! `Nats-Msg-Id` = message id, so a retried send is never generated twice.

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::HeaderMap;
use protocol::records::ActiveMessage;
use protocol::sessions::{self, SessionStoreError};
use protocol::{now_ms, subjects, ChatRequest, ErrorCode, Event, MessageId, SessionId};

use crate::app::AppState;
use crate::error::ApiError;

/// How long an accepted message may stay "in flight" in the session record
/// before it stops counting against the session's limit, whatever happened
/// to its job (a lost job must not block a session for ever).
const ACTIVE_MAX_AGE_MS: u64 = 30 * 60 * 1000;

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

/// Checks a chat before anything is stored.
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
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::BadRequest(
            "content has control characters".into(),
        ));
    }
    if let Some(model) = &input.model {
        if !state.config.allows_model(model) {
            return Err(ApiError::BadRequest(format!(
                "unknown model {:?}",
                truncate(model, 64)
            )));
        }
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
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
    let admitted = sessions::update(&state.layout.sessions, session, |record| {
        record.expire_active(now, ACTIVE_MAX_AGE_MS);
        if record.is_active(message_id) || record.is_finished(message_id) {
            return Ok(false);
        }
        if record.active.len() >= limit {
            return Err(InFlightLimit);
        }
        record.active.push(ActiveMessage {
            message_id,
            accepted_at_ms: now,
        });
        Ok(true)
    })
    .await;
    match admitted {
        Ok(Ok(_)) => {}
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

    let echo = Event::UserMessage {
        message_id,
        content: input.content.clone(),
    };
    let seq = match publish(
        state,
        subjects::events(session),
        echo.to_payload(),
        message_id,
        None,
    )
    .await
    {
        Ok(seq) => seq,
        Err(e) => {
            release(state, session, message_id).await;
            return Err(ApiError::nats(e));
        }
    };
    let request = ChatRequest {
        session_id: session,
        message_id,
        content: input.content,
        user_seq: seq,
        model: input.model,
        accepted_at_ms: now,
    };
    let payload = serde_json::to_vec(&request).map_err(ApiError::nats)?;
    let mut headers = HeaderMap::new();
    telemetry::trace_context::inject(&mut headers);
    if let Err(e) = publish(
        state,
        subjects::requests(session),
        payload.into(),
        message_id,
        Some(headers),
    )
    .await
    {
        // The echo is stored; the refusal is stored after it, so every
        // client (and every replay) sees why this question got no answer.
        let (code, error) = match e.kind() {
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                (ErrorCode::Internal, ApiError::nats(&e))
            }
            _ => (
                ErrorCode::Overloaded,
                ApiError::Overloaded("the service is at capacity; try again shortly".into()),
            ),
        };
        tracing::warn!(error = %e, %message_id, "the work-queue refused a job");
        let refusal = Event::Error {
            message_id: Some(message_id),
            code,
            message: error.to_string(),
        };
        if let Err(e) = publish(
            state,
            subjects::events(session),
            refusal.to_payload(),
            MessageId::new(),
            None,
        )
        .await
        {
            tracing::warn!(error = %e, "storing the refusal");
        }
        release(state, session, message_id).await;
        return Err(error);
    }
    Ok(Accepted { message_id, seq })
}

async fn publish(
    state: &AppState,
    subject: String,
    payload: bytes::Bytes,
    message_id: MessageId,
    headers: Option<HeaderMap>,
) -> Result<u64, async_nats::jetstream::context::PublishError> {
    let mut message = PublishMessage::build()
        .payload(payload)
        .message_id(subjects::dedup_id(message_id));
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            for value in values {
                message = message.header(name.clone(), value.clone());
            }
        }
    }
    let ack = state.js.send_publish(subject, message).await?.await?;
    Ok(ack.sequence)
}

/// Takes a refused message out of the session's in-flight list.
async fn release(state: &AppState, session: SessionId, message_id: MessageId) {
    let result = sessions::update(&state.layout.sessions, session, |record| {
        let before = record.active.len();
        record.active.retain(|m| m.message_id != message_id);
        Ok::<_, std::convert::Infallible>(record.active.len() != before)
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "releasing a refused message");
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
        .put(subjects::cancel_flag_key(message_id), "1".into())
        .await
        .map_err(ApiError::nats)?;
    let notice = protocol::events::CancelNotice { message_id };
    state
        .client
        .publish(subjects::cancel(session), notice.to_payload())
        .await
        .map_err(ApiError::nats)?;
    Ok(())
}
