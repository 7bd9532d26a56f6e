//! The REST endpoints of PROTOCOL.md: thin handlers that parse, check the
//! token, and hand off to `sessions`, `chat` and `replay`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{stored, MessageId, SessionId};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use crate::app::AppState;
use crate::chat::{self, ChatInput};
use crate::error::ApiError;
use crate::{replay, sessions};

/// Most events one `GET /api/events` returns.
const EVENTS_PAGE: usize = 10_000;

type Params = Query<HashMap<String, String>>;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The session of `?session=` after its token was checked.
async fn session(
    state: &AppState,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<SessionId, ApiError> {
    let session = sessions::parse_id(params.get("session").map(String::as_str))?;
    sessions::authenticate(state, session, bearer(headers)).await?;
    Ok(session)
}

fn json_body<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge("request body too large".into())
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

pub async fn create_session(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (session, token) = sessions::create(&state).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"session_id": session, "token": token.as_str()})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatBody {
    message_id: Option<MessageId>,
    content: String,
    #[serde(default)]
    model: Option<String>,
}

pub async fn post_chat(
    State(state): State<AppState>,
    Query(params): Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let session = session(&state, &params, &headers).await?;
    let body: ChatBody = json_body(body)?;
    let span = tracing::info_span!("chat.submit", otel.name = "chat.submit", session_id = %session, message_id = tracing::field::Empty);
    if let Some(parent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let state_header = headers.get("tracestate").and_then(|v| v.to_str().ok());
        telemetry::trace_context::adopt_w3c(&span, parent, state_header);
    }
    crate::metrics::frame_in("chat");
    let input = ChatInput {
        message_id: body.message_id,
        content: body.content,
        model: body.model,
    };
    let accepted = chat::submit(&state, session, input)
        .instrument(span.clone())
        .await?;
    span.record("message_id", tracing::field::display(accepted.message_id));
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

#[derive(Deserialize)]
struct CancelBody {
    message_id: MessageId,
}

pub async fn post_cancel(
    State(state): State<AppState>,
    Query(params): Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let session = session(&state, &params, &headers).await?;
    let body: CancelBody = json_body(body)?;
    crate::metrics::frame_in("cancel");
    chat::cancel(&state, session, body.message_id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({}))).into_response())
}

pub async fn get_history(
    State(state): State<AppState>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = session(&state, &params, &headers).await?;
    let turns = stored::read_turns(&state.client, &state.layout.history, session, 1_000)
        .await
        .map_err(ApiError::nats)?;
    let last_seq = replay::position(&state, session, None).await?.last_seq;
    Ok(Json(json!({"turns": turns, "last_seq": last_seq})).into_response())
}

pub async fn get_events(
    State(state): State<AppState>,
    Query(params): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = session(&state, &params, &headers).await?;
    let after = match params.get("after_seq") {
        None => 0,
        Some(raw) => raw.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "after_seq must be a non-negative integer, not {raw:?}"
            ))
        })?,
    };
    let position = replay::position(&state, session, Some(after)).await?;
    let mut frames = replay::frames(&state, session, after + 1, position.last_seq).await?;
    frames.truncate(EVENTS_PAGE);
    let last_seq = frames.last().map_or(position.last_seq, |(seq, _)| *seq);
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
