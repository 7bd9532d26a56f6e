//! Who a client is: creating a session (random id, token shown once, only
//! its hash stored), proving a client owns one, and the REST extractors that
//! do it for every endpoint ([`AuthenticatedSession`], [`AuthenticatedUser`]).
//! In `GATEWAY_AUTH=jwt` mode the same extractors take the app's JWT instead
//! of the session's token, and a session opens for its owner only
//! (`users`). The KV record itself is `protocol::sessions`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use protocol::records::SessionRecord;
use protocol::sessions::{self, SessionStoreError};
use protocol::{now_ms, subjects, SessionId, SessionToken};
use serde::Deserialize;

use crate::app::AppState;
use crate::config::AuthMode;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::users::{self, User};

/// A new session and the token that unlocks it (returned once, never stored).
pub async fn create_session(state: &AppState) -> Result<(SessionId, SessionToken), ApiError> {
    let session = SessionId::new();
    let token = SessionToken::generate();
    let record = SessionRecord::new(token.hash(), state.node.clone(), now_ms());
    sessions::create(&state.layout.sessions, session, &record)
        .await
        .map_err(ApiError::nats)?;
    Ok((session, token))
}

/// Parses a session id a client sent.
pub fn parse_session_id(raw: Option<&str>) -> Result<SessionId, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::BadRequest("the session parameter is missing".into()))?;
    raw.parse()
        .map_err(|e| ApiError::BadRequest(format!("session: {e}")))
}

/// Whether clients prove who they are with the app's JWT.
pub fn jwt_mode(state: &AppState) -> bool {
    state.config.auth.mode == AuthMode::Jwt
}

/// Checks that `token` opens `session`: the session's own token, or in
/// `jwt` mode a valid token of the session's owner (the user is returned).
/// Session mode: a wrong token and an unknown or expired session are the
/// same `unauthorized`, so the answer tells a stranger nothing about which
/// session ids exist. Jwt mode: a bad token is `unauthorized`; another
/// user's session is `not_found`, as an unknown one.
pub async fn check_token(
    state: &AppState,
    session: SessionId,
    token: Option<&str>,
) -> Result<(sessions::Versioned, Option<User>), ApiError> {
    if jwt_mode(state) {
        let user = users::authenticate(state, token).await?;
        let stored = load_record(state, session)
            .await?
            .ok_or_else(users::unknown_session)?;
        users::check_owner(&stored.record, &user)?;
        return Ok((stored, Some(user)));
    }
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    let stored = load_record(state, session)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if !stored
        .record
        .token_hash
        .matches(&SessionToken::presented(token))
    {
        return Err(ApiError::Unauthorized);
    }
    Ok((stored, None))
}

/// The session's stored record, asked again on a new connection when the
/// first one was lost on the way.
async fn load_record(
    state: &AppState,
    session: SessionId,
) -> Result<Option<sessions::Versioned>, ApiError> {
    state
        .retry_api_call(|| async {
            sessions::load(&state.layout.sessions, session)
                .await
                .map_err(ApiError::nats)
        })
        .await
}

/// Revokes a session its owner no longer wants (`DELETE /api/sessions/{id}`,
/// the UI's "remove"): the record goes, so the token opens nothing, and
/// every gateway closes the session's sockets (1008).
pub async fn revoke(
    state: &AppState,
    session: SessionId,
    token: Option<&str>,
) -> Result<(), ApiError> {
    let (_, user) = check_token(state, session, token).await?;
    sessions::remove(&state.layout.sessions, session)
        .await
        .map_err(ApiError::nats)?;
    state
        .client
        .publish(subjects::revoked(session), bytes::Bytes::new())
        .await
        .map_err(ApiError::nats)?;
    state.client.flush().await.map_err(ApiError::nats)?;
    if let Some(user) = user {
        users::deleted(state, &user.key, session).await;
    }
    Ok(())
}

/// Records that this node serves the session now (on attach, not per frame),
/// which also renews the session's time to live.
pub async fn record_attach(state: &AppState, session: SessionId) {
    let node = &state.node;
    // Compare-and-set: asked again after a lost connection, it writes at
    // most once more.
    let result = state
        .retry_when_lost(|| {
            sessions::update(&state.layout.sessions, session, |record| {
                record.last_seen_ms = now_ms();
                record.node.clone_from(node);
                Ok::<_, std::convert::Infallible>(true)
            })
        })
        .await;
    match result {
        Ok(Err(SessionStoreError::NotFound)) | Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "recording the session's node"),
        Err(e) => tracing::debug!(error = %e, "recording the session's node"),
    }
}

/// `?session=` of a REST call.
#[derive(Debug, Deserialize)]
pub struct SessionQuery {
    pub session: Option<String>,
}

/// The session of a REST call, after its `Authorization: Bearer` token was
/// checked against the session's record: a handler that takes one only runs
/// for the session's owner. The bearer is the session's token, or in `jwt`
/// mode the app's JWT of the session's owner (then `user` is that user).
#[derive(Debug, Clone)]
pub struct AuthenticatedSession {
    pub id: SessionId,
    pub user: Option<User>,
    /// The record the token was checked against, as read for the check: a
    /// change of the record starts from it rather than reading it again
    /// ([`sessions::update_from`]).
    pub record: sessions::Versioned,
}

impl FromRequestParts<AppState> for AuthenticatedSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ApiQuery(query) = ApiQuery::<SessionQuery>::from_request_parts(parts, state).await?;
        let id = parse_session_id(query.session.as_deref())?;
        Self::verify(state, id, &parts.headers).await
    }
}

impl AuthenticatedSession {
    /// The check itself, for callers that find the session id elsewhere
    /// than `?session=` (the AI SDK endpoints: the path or the body).
    pub async fn verify(
        state: &AppState,
        id: SessionId,
        headers: &HeaderMap,
    ) -> Result<Self, ApiError> {
        let (record, user) = check_token(state, id, bearer(headers)).await?;
        Ok(Self { id, user, record })
    }
}

/// The caller of a user endpoint (`GET /api/sessions`, …): a valid JWT in
/// `Authorization: Bearer`. Session mode has no users: `not_found`, as for
/// an endpoint that does not exist.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser(pub User);

impl FromRequestParts<AppState> for AuthenticatedUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !jwt_mode(state) {
            return Err(ApiError::NotFound(
                "user endpoints need GATEWAY_AUTH=jwt".into(),
            ));
        }
        users::authenticate(state, bearer(&parts.headers))
            .await
            .map(Self)
    }
}

/// The token of `Authorization: Bearer …`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}
