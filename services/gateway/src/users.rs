//! Users of `GATEWAY_AUTH=jwt`: who a caller is (its verified token, not
//! revoked), the sessions a user owns (created under the per-user quotas,
//! listed, renamed, deleted), the answers a user has in flight across all of
//! them, and the notices that keep every device's list live. The user's
//! record and its key layout are `protocol::users`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use protocol::records::{SessionRecord, SessionSummary, UserAnswer};
use protocol::sessions;
use protocol::users::{self, SessionChange, UserNotice};
use protocol::{now_ms, subjects, MessageId, SessionId, SessionToken, UserKey};
use serde::Serialize;

use crate::app::AppState;
use crate::error::ApiError;
use crate::jwt::Claims;

/// A caller whose token was verified and not revoked.
#[derive(Clone, Debug)]
pub struct User {
    pub key: UserKey,
    pub claims: Claims,
}

/// The user a token proves, or the one uniform `unauthorized`: a forged,
/// expired, foreign or revoked token gets the same answer.
pub async fn authenticate(state: &AppState, token: Option<&str>) -> Result<User, ApiError> {
    let verifier = state.verifier.as_ref().ok_or(ApiError::Unauthorized)?;
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    let claims = verifier.verify(token).await.map_err(|refused| {
        tracing::debug!(reason = %refused, "token refused");
        crate::metrics::token_refused();
        ApiError::Unauthorized
    })?;
    let key = UserKey::of_subject(&claims.sub);
    let revoked = state
        .retry_api_call(|| async {
            users::revoked_before(&state.layout.sessions, &key)
                .await
                .map_err(ApiError::nats)
        })
        .await?;
    if let Some(before_ms) = revoked {
        // A token that does not say when it was issued may be older.
        let issued_ms = claims.iat.map(|iat| iat.saturating_mul(1000));
        if issued_ms.is_none_or(|issued| issued <= before_ms) {
            tracing::debug!("token issued before the user's revocation");
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(User { key, claims })
}

/// The answer to a session that is unknown, expired or another user's: the
/// same, so a caller learns nothing about other users' session ids.
pub fn unknown_session() -> ApiError {
    ApiError::NotFound("unknown or expired session".into())
}

/// Why a user's record refused a change.
enum Refusal {
    Quota(String, Duration),
    Unknown,
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Quota(message, retry_after) => ApiError::Quota {
                message,
                retry_after,
            },
            Refusal::Unknown => unknown_session(),
        }
    }
}

/// Creates a session owned by `user`, within the user's quotas (sessions
/// held, sessions created in the last minute).
pub async fn create_session(state: &AppState, user: &User) -> Result<SessionId, ApiError> {
    let session = SessionId::new();
    let now = now_ms();
    let auth = &state.config.auth;
    let summary = SessionSummary {
        id: session,
        title: String::new(),
        created: now,
        updated: now,
    };
    let listed = users::update(&state.layout.sessions, &user.key, |record| {
        record.forget_old_creations(now);
        if record.sessions.len() >= auth.user_max_sessions {
            return Err(Refusal::Quota(
                format!(
                    "at most {} sessions per user: delete one first",
                    auth.user_max_sessions
                ),
                Duration::from_secs(60),
            ));
        }
        if record.created_recently.len() >= auth.user_sessions_per_minute {
            let oldest = record.created_recently.iter().min().copied().unwrap_or(now);
            let wait = 60_000u64.saturating_sub(now.saturating_sub(oldest));
            return Err(Refusal::Quota(
                format!(
                    "at most {} new sessions per user per minute",
                    auth.user_sessions_per_minute
                ),
                Duration::from_millis(wait),
            ));
        }
        record.sessions.push(summary.clone());
        record.created_recently.push(now);
        Ok(true)
    })
    .await
    .map_err(ApiError::nats)?;
    listed?;
    // The token of an owned session is never handed out: the user's JWT
    // opens it. Its hash is stored all the same (the record's shape).
    let record = SessionRecord::new(SessionToken::generate().hash(), state.node.clone(), now)
        .owned_by(user.key.clone());
    if let Err(e) = sessions::create(&state.layout.sessions, session, &record).await {
        unlist(state, &user.key, session).await;
        return Err(ApiError::nats(e));
    }
    notify(
        state,
        &user.key,
        SessionChange::Created,
        session,
        Some(summary),
    )
    .await;
    Ok(session)
}

/// Checks that `record` belongs to `user`.
pub fn check_owner(record: &SessionRecord, user: &User) -> Result<(), ApiError> {
    if record.owner.as_ref() == Some(&user.key) {
        Ok(())
    } else {
        Err(unknown_session())
    }
}

/// One entry of `GET /api/sessions`.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub id: SessionId,
    pub title: String,
    pub created: u64,
    pub updated: u64,
    pub in_flight: bool,
}

/// A page of the user's sessions, newest activity first.
#[derive(Debug, Serialize)]
pub struct Page {
    pub sessions: Vec<Listed>,
    /// Pass as `cursor` for the next page; none after the last.
    pub next_cursor: Option<String>,
}

/// Largest page of `GET /api/sessions`.
pub const MAX_PAGE: usize = 100;

/// A page of the user's sessions after `cursor` (`<updated>.<id>` of the
/// last entry of the previous page). Reads the user's record only.
pub async fn list(
    state: &AppState,
    user: &User,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page, ApiError> {
    let after = cursor.map(parse_cursor).transpose()?;
    let record = state
        .retry_api_call(|| async {
            users::load(&state.layout.sessions, &user.key)
                .await
                .map_err(ApiError::nats)
        })
        .await?
        .map(|(record, _)| record)
        .unwrap_or_default();
    let running = running_answers(state, &record.answers).await;
    let ordered = record.newest_first();
    let start = match after {
        Some((updated, id)) => ordered
            .iter()
            .position(|s| (s.updated, s.id) < (updated, id))
            .unwrap_or(ordered.len()),
        None => 0,
    };
    let limit = limit.clamp(1, MAX_PAGE);
    let page: Vec<&SessionSummary> = ordered.iter().skip(start).take(limit).copied().collect();
    let next_cursor = (start + page.len() < ordered.len())
        .then(|| page.last().map(|s| format!("{}.{}", s.updated, s.id)))
        .flatten();
    let sessions = page
        .into_iter()
        .map(|s| Listed {
            id: s.id,
            title: s.title.clone(),
            created: s.created,
            updated: s.updated,
            in_flight: running.iter().any(|a| a.session_id == s.id),
        })
        .collect();
    Ok(Page {
        sessions,
        next_cursor,
    })
}

fn parse_cursor(raw: &str) -> Result<(u64, SessionId), ApiError> {
    let bad = || ApiError::BadRequest("cursor: not one this endpoint gave".into());
    let (updated, id) = raw.split_once('.').ok_or_else(bad)?;
    Ok((
        updated.parse().map_err(|_| bad())?,
        id.parse().map_err(|_| bad())?,
    ))
}

/// Renames a session of the user's.
pub async fn rename(
    state: &AppState,
    user: &User,
    session: SessionId,
    title: &str,
) -> Result<SessionSummary, ApiError> {
    let title = users::title_of(title);
    if title.is_empty() {
        return Err(ApiError::BadRequest("title is empty".into()));
    }
    let now = now_ms();
    let renamed = users::update(&state.layout.sessions, &user.key, |record| {
        let summary = record.session_mut(session).ok_or(Refusal::Unknown)?;
        summary.title.clone_from(&title);
        summary.updated = now;
        Ok::<_, Refusal>(true)
    })
    .await
    .map_err(ApiError::nats)??;
    let summary = renamed
        .session(session)
        .cloned()
        .ok_or_else(unknown_session)?;
    notify(
        state,
        &user.key,
        SessionChange::Renamed,
        session,
        Some(summary.clone()),
    )
    .await;
    Ok(summary)
}

/// Takes a deleted session off the user's list and tells the user's devices.
pub async fn deleted(state: &AppState, user: &UserKey, session: SessionId) {
    unlist(state, user, session).await;
    notify(state, user, SessionChange::Deleted, session, None).await;
}

async fn unlist(state: &AppState, user: &UserKey, session: SessionId) {
    let result = users::update(&state.layout.sessions, user, |record| {
        let before = record.sessions.len();
        record.sessions.retain(|s| s.id != session);
        record.answers.retain(|a| a.session_id != session);
        Ok::<_, std::convert::Infallible>(record.sessions.len() != before)
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "taking a session off its user's list");
    }
}

/// The answers of `answers` still running: each checked against its
/// session's record (bounded: at most the in-flight quota of them).
async fn running_answers(state: &AppState, answers: &[UserAnswer]) -> Vec<UserAnswer> {
    let max_age = state.config.layout.in_flight_max_age_ms();
    let now = now_ms();
    let mut records: HashMap<SessionId, Option<SessionRecord>> = HashMap::new();
    let sessions: HashSet<SessionId> = answers.iter().map(|a| a.session_id).collect();
    for session in sessions {
        let record = sessions::load(&state.layout.sessions, session)
            .await
            .ok()
            .flatten()
            .map(|v| v.record);
        records.insert(session, record);
    }
    answers
        .iter()
        .filter(|a| now.saturating_sub(a.accepted_at_ms) <= max_age)
        .filter(|a| {
            records
                .get(&a.session_id)
                .and_then(Option::as_ref)
                .is_some_and(|r| r.is_active(a.message_id) && !r.is_ending(a.message_id))
        })
        .copied()
        .collect()
}

/// Counts a new answer of `owner`'s session against the user's in-flight
/// quota (all of the user's sessions, every gateway), and marks the session
/// active in the list (its title from the first question). A retry of an
/// answer counted already passes.
pub async fn admit_answer(
    state: &AppState,
    owner: &UserKey,
    session: SessionId,
    message_id: MessageId,
    question: Option<&str>,
) -> Result<(), ApiError> {
    let limit = state.config.auth.user_max_in_flight;
    let before = users::load(&state.layout.sessions, owner)
        .await
        .map_err(ApiError::nats)?
        .map(|(record, _)| record)
        .unwrap_or_default();
    let checked: HashSet<MessageId> = before.answers.iter().map(|a| a.message_id).collect();
    let running: HashSet<MessageId> = running_answers(state, &before.answers)
        .await
        .iter()
        .map(|a| a.message_id)
        .collect();
    let now = now_ms();
    let admitted = users::update(&state.layout.sessions, owner, |record| {
        // Answers found ended go; those counted since the check stay.
        record
            .answers
            .retain(|a| running.contains(&a.message_id) || !checked.contains(&a.message_id));
        if record.answers.iter().any(|a| a.message_id == message_id) {
            return Ok(false);
        }
        if record.answers.len() >= limit {
            return Err(Refusal::Quota(
                format!("at most {limit} answers may be in flight per user"),
                Duration::from_secs(2),
            ));
        }
        record.answers.push(UserAnswer {
            session_id: session,
            message_id,
            accepted_at_ms: now,
        });
        if let Some(summary) = record.session_mut(session) {
            summary.updated = now;
            if let (true, Some(question)) = (summary.title.is_empty(), question) {
                summary.title = users::title_of(question);
            }
        }
        Ok(true)
    })
    .await
    .map_err(ApiError::nats)??;
    notify(
        state,
        owner,
        SessionChange::AnswerStarted,
        session,
        admitted.session(session).cloned(),
    )
    .await;
    Ok(())
}

/// Takes a refused answer off the user's in-flight count.
pub async fn forget_answer(state: &AppState, owner: &UserKey, message_id: MessageId) {
    let result = users::update(&state.layout.sessions, owner, |record| {
        let before = record.answers.len();
        record.answers.retain(|a| a.message_id != message_id);
        Ok::<_, std::convert::Infallible>(record.answers.len() != before)
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "forgetting a refused answer");
    }
}

/// Closes every socket of the user on every gateway, and refuses the
/// tokens issued until now (`DELETE /api/users/me/sockets`).
pub async fn revoke_sockets(state: &AppState, user: &User) -> Result<(), ApiError> {
    let now = now_ms();
    users::revoke(&state.layout.sessions, &user.key, now)
        .await
        .map_err(ApiError::nats)?;
    let notice = UserNotice::Revoked { before_ms: now };
    state
        .client
        .publish(subjects::user_feed(&user.key), notice.to_payload())
        .await
        .map_err(ApiError::nats)?;
    state.client.flush().await.map_err(ApiError::nats)?;
    Ok(())
}

/// Tells the user's devices what changed. Core NATS: a lost notice leaves
/// a list stale until its next change or reload, never wrong for good.
async fn notify(
    state: &AppState,
    user: &UserKey,
    change: SessionChange,
    session_id: SessionId,
    session: Option<SessionSummary>,
) {
    let notice = UserNotice::Session {
        change,
        session_id,
        session,
    };
    if let Err(e) = state
        .client
        .publish(subjects::user_feed(user), notice.to_payload())
        .await
    {
        tracing::debug!(error = %e, "publishing a session-list notice");
    }
}
