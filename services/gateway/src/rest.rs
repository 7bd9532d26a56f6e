//! The REST endpoints of docs/PROTOCOL.md: each handler is its business
//! logic; the extractors check the session's token
//! ([`AuthenticatedSession`]) and parse the query and the body, with the
//! same error bodies as everything else.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{stored, MessageId};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use crate::app::AppState;
use crate::auth::{self, AuthenticatedSession, AuthenticatedUser};
use crate::chat::{self, ChatInput};
use crate::error::ApiError;
use crate::extract::{ApiQuery, JsonBody};
use crate::regenerate::{self, RegenerateInput};
use crate::replay::{self, SessionEvents, StoredEvents};

/// Most events one `GET /api/events` returns; read as a page at the source,
/// so a long session costs a request no more than this.
const EVENTS_PAGE: usize = 1_000;

/// `DELETE /api/sessions/{id}` with the session's token: revoked (204).
pub async fn delete_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let session = auth::parse_session_id(Some(&id))?;
    auth::revoke(&state, session, auth::bearer(&headers)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/sessions`: an anonymous session and its token, or in `jwt`
/// mode a session owned by the caller (no token: the caller's JWT opens it).
pub async fn create_session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if auth::jwt_mode(&state) {
        let user = crate::users::authenticate(&state, auth::bearer(&headers)).await?;
        let session = crate::users::create_session(&state, &user).await?;
        return Ok((StatusCode::CREATED, Json(json!({"session_id": session}))).into_response());
    }
    let (session, token) = auth::create_session(&state).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"session_id": session, "token": token.as_str()})),
    )
        .into_response())
}

/// `GET /api/sessions?cursor=&limit=`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// Sessions in a page when `limit` is not given.
const LIST_PAGE: usize = 20;

/// `GET /api/sessions` (`jwt` mode): the caller's sessions, newest
/// activity first, a page at a time.
pub async fn list_sessions(
    State(state): State<AppState>,
    AuthenticatedUser(user): AuthenticatedUser,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let page = crate::users::list(
        &state,
        &user,
        query.cursor.as_deref(),
        query.limit.unwrap_or(LIST_PAGE),
    )
    .await?;
    Ok(Json(page).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    title: String,
}

/// `PATCH /api/sessions/{id}` (`jwt` mode) with `{"title"}`: the session
/// as listed now.
pub async fn rename_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    AuthenticatedUser(user): AuthenticatedUser,
    JsonBody(body): JsonBody<RenameBody>,
) -> Result<Response, ApiError> {
    let session = auth::parse_session_id(Some(&id))?;
    let summary = crate::users::rename(&state, &user, session, &body.title).await?;
    Ok(Json(summary).into_response())
}

/// `DELETE /api/users/me/sockets` (`jwt` mode): every socket of the caller
/// closes on every gateway, and tokens issued until now are refused (204).
pub async fn revoke_user_sockets(
    State(state): State<AppState>,
    AuthenticatedUser(user): AuthenticatedUser,
) -> Result<StatusCode, ApiError> {
    crate::users::revoke_sockets(&state, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatBody {
    message_id: Option<MessageId>,
    content: String,
    #[serde(default)]
    model: Option<String>,
}

pub async fn post_chat(
    State(state): State<AppState>,
    session: AuthenticatedSession,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ChatBody>,
) -> Result<Response, ApiError> {
    let AuthenticatedSession {
        id: session,
        record,
        ..
    } = session;
    let span = tracing::info_span!("chat.submit", otel.name = "chat.submit", session_id = %session, message_id = tracing::field::Empty);
    if let Some(parent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let state_header = headers.get("tracestate").and_then(|v| v.to_str().ok());
        telemetry::trace_context::adopt_w3c(&span, parent, state_header);
    }
    crate::metrics::frame_in(protocol::ClientFrame::CHAT);
    let input = ChatInput {
        message_id: body.message_id,
        content: body.content,
        model: body.model,
        checked_record: Some(record),
    };
    let accepted = chat::submit(&state, session, input)
        .instrument(span.clone())
        .await?;
    span.record("message_id", tracing::field::display(accepted.message_id));
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegenerateBody {
    #[serde(default)]
    message_id: Option<MessageId>,
    #[serde(default)]
    replaces: Option<MessageId>,
    #[serde(default)]
    model: Option<String>,
}

pub async fn post_regenerate(
    State(state): State<AppState>,
    session: AuthenticatedSession,
    JsonBody(body): JsonBody<RegenerateBody>,
) -> Result<Response, ApiError> {
    let session = session.id;
    let span = tracing::info_span!("chat.regenerate", otel.name = "chat.regenerate", session_id = %session);
    crate::metrics::frame_in(protocol::ClientFrame::REGENERATE);
    let input = RegenerateInput {
        message_id: body.message_id,
        replaces: body.replaces,
        model: body.model,
    };
    let accepted = regenerate::regenerate(&state, session, input)
        .instrument(span)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

#[derive(Deserialize)]
pub struct CancelBody {
    message_id: MessageId,
}

pub async fn post_cancel(
    State(state): State<AppState>,
    session: AuthenticatedSession,
    JsonBody(body): JsonBody<CancelBody>,
) -> Result<Response, ApiError> {
    crate::metrics::frame_in(protocol::ClientFrame::CANCEL);
    chat::cancel(&state, session.id, body.message_id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response())
}

pub async fn get_history(
    State(state): State<AppState>,
    session: AuthenticatedSession,
) -> Result<Response, ApiError> {
    let turns = stored::read_turns(
        &state.client,
        &state.layout.history,
        session.id,
        replay::HISTORY_TURNS,
    )
    .await
    .map_err(ApiError::nats)?;
    let events = SessionEvents::new(state, session.id);
    let last_seq = events.position(None).await?.last_seq;
    Ok(Json(json!({"turns": turns, "last_seq": last_seq})).into_response())
}

/// `GET /api/events?after_seq=`: the events after it (0 when absent).
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    pub after_seq: Option<String>,
}

pub async fn get_events(
    State(state): State<AppState>,
    session: AuthenticatedSession,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let after = query
        .after_seq
        .as_deref()
        .map(replay::parse_after_seq)
        .transpose()?
        .unwrap_or(0);
    let events = SessionEvents::new(state, session.id);
    // Asked first: every event acknowledged before this call is at or
    // below it, and the page is read until it reaches it.
    let stored_last = events.last_seq_at_leader().await?;
    let position = events.position(Some(after)).await?;
    let frames = replay::frames_through(
        &events,
        after + 1,
        position.last_seq,
        stored_last,
        EVENTS_PAGE,
        replay::CATCH_UP_PATIENCE,
    )
    .await?;
    let last_seq = frames
        .last()
        .map_or(position.last_seq.max(stored_last), |(seq, _)| *seq);
    // The frames are JSON already: join them, no re-serialisation.
    let mut body =
        String::with_capacity(frames.iter().map(|(_, f)| f.len() + 1).sum::<usize>() + 48);
    body.push_str("{\"events\":[");
    for (i, (_, frame)) in frames.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(frame);
    }
    body.push_str("],\"last_seq\":");
    body.push_str(&last_seq.to_string());
    body.push('}');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub async fn health(State(state): State<AppState>) -> Response {
    let connected = state.client.connection_state() == async_nats::connection::State::Connected;
    crate::metrics::nats_connected(connected);
    let body = json!({
        "status": if connected { "ok" } else { "degraded" },
        "node": state.node,
        "nats": if connected { "connected" } else { "disconnected" },
    });
    let status = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}
