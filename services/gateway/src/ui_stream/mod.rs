//! The AI SDK's chat endpoints (`useChat` with `DefaultChatTransport`, and
//! assistant-ui's runtime on top of it): the UI message stream, protocol
//! v1, over SSE. A second renderer of the session's events, not a second
//! relay: the stream is a socket's relay ([`SessionFeed`]) whose frames
//! [`chunks`] turns into UI message chunks, so replay, gap repair and
//! exactly-once delivery are the WebSocket's own.
//!
//! - `POST /api/ui/chat`: the chat's `id` is the session; the question is
//!   the last user message's text (the client's copy of the history is not
//!   trusted: the context stays ours). `regenerate-message` regenerates.
//! - `GET /api/ui/chat/{id}/stream`: 204 when nothing is in flight, else
//!   the answer from its `start`, replayed then live.
//! - `GET /api/ui/chat/{id}/stream/{message_id}`: the same for one answer
//!   (assistant-ui's resume, by the POST's `x-resumable-stream-id`).
//! - `POST /api/ui/chat/{id}/stop`: cancels what is in flight (the SDK's
//!   `stop()` only aborts its fetch, which looks like a reload).
//! - `GET /api/ui/chat/{id}/messages`: the finished turns as `UIMessage[]`.

mod body;
mod chunks;
mod frame;
mod inflight;
mod messages;
mod request;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::{MessageId, SessionId};
use serde_json::json;
use tracing::Instrument;

use self::body::AnswerBody;
use self::request::{Trigger, UiChatBody};
use crate::app::AppState;
use crate::auth::{self, AuthenticatedSession};
use crate::chat::{self, ChatInput};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::regenerate::{self, RegenerateInput};
use crate::socket::SessionFeed;
use crate::users;

/// The header assistant-ui reads to learn the id it resumes by.
pub const RESUMABLE_STREAM_ID: HeaderName = HeaderName::from_static("x-resumable-stream-id");
/// The header that tells the AI SDK the body is its UI message stream.
const UI_MESSAGE_STREAM: HeaderName = HeaderName::from_static("x-vercel-ai-ui-message-stream");
/// Nginx passes the stream through unbuffered when the answer says so.
const ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// The routes, and `POST /api/sessions` (an app creates its chat's session
/// first; in `GATEWAY_AUTH=jwt` mode `GET` lists the user's); CORS wraps
/// them when `--cors-origins` lists any site.
pub fn router(state: &AppState) -> Router<AppState> {
    let routes = Router::new()
        .route(
            "/api/sessions",
            post(crate::rest::create_session).get(crate::rest::list_sessions),
        )
        // Its own body limit: the SDK posts the whole conversation.
        .route(
            "/api/ui/chat",
            post(post_chat).layer(DefaultBodyLimit::max(state.config.ui_chat_max_body_bytes)),
        )
        .route("/api/ui/chat/{id}/stream", get(get_stream))
        .route("/api/ui/chat/{id}/stream/{message_id}", get(get_stream_of))
        .route("/api/ui/chat/{id}/stop", post(post_stop))
        .route("/api/ui/chat/{id}/messages", get(get_messages));
    match cors(&state.config.cors_origins) {
        Some(layer) => routes.layer(layer),
        None => routes,
    }
}

/// Off unless sites are listed: the app is usually served by the same
/// Nginx. Preflight allows the two headers the SDK sends with a token.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim().trim_end_matches('/')).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .expose_headers([RESUMABLE_STREAM_ID])
            .max_age(Duration::from_secs(600)),
    )
}

/// The chat of a path `/api/ui/chat/{id}/…`, its token checked by the same
/// check every REST call uses.
pub struct ChatSession {
    id: SessionId,
    message_id: Option<String>,
}

impl FromRequestParts<AppState> for ChatSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        // No token, no lookup: the same order as every REST call.
        if auth::bearer(&parts.headers).is_none_or(str::is_empty) {
            return Err(ApiError::Unauthorized);
        }
        let id = auth::parse_session_id(param("id").as_deref())?;
        let session = AuthenticatedSession::verify(state, id, &parts.headers).await?;
        Ok(Self {
            id: session.id,
            message_id: param("message_id"),
        })
    }
}

async fn post_chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<UiChatBody>,
) -> Result<Response, ApiError> {
    if auth::bearer(&headers).is_none_or(str::is_empty) {
        return Err(ApiError::Unauthorized);
    }
    let raw_id = body.id.as_str();
    let id = auth::parse_session_id(Some(raw_id))?;
    // With user tokens an unknown `id` the caller chose becomes a session it
    // owns (another user's id stays `not_found`); with session tokens the app
    // creates the session first, `POST /api/sessions`.
    let (session, checked_record) = match AuthenticatedSession::verify(&state, id, &headers).await {
        Ok(session) => (session.id, Some(session.record)),
        Err(ApiError::NotFound(_)) if auth::jwt_mode(&state) => {
            let user = users::authenticate(&state, auth::bearer(&headers)).await?;
            (users::create_chosen_session(&state, &user, id).await?, None)
        }
        Err(refused) => return Err(refused),
    };
    let trigger = body.trigger()?;
    // Attached before the question is stored: every event after it comes
    // live, and the stream need not be read to start.
    let feed = SessionFeed::attach(&state, session).await?;
    let accepted = match trigger {
        Trigger::Submit => {
            let (content, message_id) = body.question()?;
            let input = ChatInput {
                message_id,
                content,
                model: None,
                checked_record,
            };
            chat::submit(&state, session, input).await?
        }
        Trigger::Regenerate => {
            let input = RegenerateInput {
                message_id: None,
                replaces: body.regenerated(),
                model: None,
            };
            regenerate::regenerate(&state, session, input).await?
        }
    };
    let feed = feed.starting_at_question(&accepted).await?;
    let mut response = ui_stream(&state, feed, accepted.message_id);
    if let Ok(value) = HeaderValue::from_str(&accepted.message_id.to_string()) {
        response.headers_mut().insert(RESUMABLE_STREAM_ID, value);
    }
    Ok(response)
}

async fn get_stream(
    State(state): State<AppState>,
    chat: ChatSession,
) -> Result<Response, ApiError> {
    resume(&state, chat.id, None).await
}

async fn get_stream_of(
    State(state): State<AppState>,
    chat: ChatSession,
) -> Result<Response, ApiError> {
    let wanted = chat
        .message_id
        .as_deref()
        .map(str::parse::<MessageId>)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("stream id: {e}")))?;
    resume(&state, chat.id, wanted).await
}

/// The answer in flight from its start, or 204.
async fn resume(
    state: &AppState,
    session: SessionId,
    wanted: Option<MessageId>,
) -> Result<Response, ApiError> {
    let Some(flight) = inflight::find(state, session, wanted).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let feed = SessionFeed::open(state, session, flight.start_after).await?;
    Ok(ui_stream(state, feed, flight.message_id))
}

async fn post_stop(State(state): State<AppState>, chat: ChatSession) -> Result<Response, ApiError> {
    let record = protocol::sessions::load(&state.layout.sessions, chat.id)
        .await
        .map_err(ApiError::nats)?
        .ok_or(ApiError::Unauthorized)?
        .record;
    let mut stopped = Vec::new();
    for message in record.active.iter().filter(|m| !m.ending) {
        match chat::cancel(&state, chat.id, message.message_id).await {
            Ok(()) => stopped.push(message.message_id),
            // Finished between the read and the cancel: nothing to stop.
            Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"stopped": stopped}))).into_response())
}

async fn get_messages(
    State(state): State<AppState>,
    chat: ChatSession,
) -> Result<Response, ApiError> {
    let turns = protocol::stored::read_turns(
        &state.client,
        &state.layout.history,
        chat.id,
        crate::replay::HISTORY_TURNS,
    )
    .await
    .map_err(ApiError::nats)?;
    let flight = inflight::find(&state, chat.id, None).await?;
    Ok(Json(messages::ui_messages(turns, flight.as_ref())).into_response())
}

/// The SSE response: the session's relay, run inside the body
/// ([`AnswerBody`]), renders the answer's events as UI message chunks and
/// ends after its terminal event with `[DONE]`.
fn ui_stream(state: &AppState, feed: SessionFeed, message_id: MessageId) -> Response {
    let state = state.clone();
    let relay = AnswerBody::new(message_id, move |sink| {
        feed.relay(state, sink).in_current_span()
    });
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (UI_MESSAGE_STREAM, HeaderValue::from_static("v1")),
            (ACCEL_BUFFERING, HeaderValue::from_static("no")),
        ],
        Body::from_stream(relay),
    )
        .into_response()
}
