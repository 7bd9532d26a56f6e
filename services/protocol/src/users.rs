//! Users of `GATEWAY_AUTH=jwt`: a user's record in the `chat_sessions`
//! bucket (the session list and what the per-user quotas count), the time
//! the user's tokens were revoked, and the notices on the user's core
//! subject that keep every device's session list live.

use async_nats::jetstream::kv::{self, Operation};
use serde::{Deserialize, Serialize};

use crate::conflicts::is_wrong_last_sequence;
use crate::ids::{SessionId, UserKey};
use crate::records::{SessionSummary, UserRecord};
use crate::sessions::SessionStoreError;
use crate::subjects;

/// Characters of a session's title: the first question is cut to this.
pub const TITLE_CHARS: usize = 80;

/// A title from a question or a rename: whitespace runs folded to one
/// space, control characters dropped, at most [`TITLE_CHARS`] characters.
pub fn title_of(text: &str) -> String {
    let folded = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>();
    let mut title: String = folded.chars().take(TITLE_CHARS).collect();
    if folded.chars().count() > TITLE_CHARS {
        title.pop();
        title.push('…');
    }
    title
}

/// What changed in a user's session list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionChange {
    Created,
    Renamed,
    Deleted,
    AnswerStarted,
    AnswerFinished,
}

/// A notice on `subjects::user_feed`: a change to the user's list, or the
/// revocation of every socket of the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UserNotice {
    Session {
        change: SessionChange,
        session_id: SessionId,
        /// The session as listed after the change (none once deleted, or
        /// when the publisher does not hold the list, as a worker).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionSummary>,
    },
    /// Every socket of the user closes; tokens issued before are refused.
    Revoked { before_ms: u64 },
}

impl UserNotice {
    pub fn to_payload(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }
}

/// Reads a user's record and its revision (`None`: the user has none yet).
pub async fn load(
    store: &kv::Store,
    user: &UserKey,
) -> Result<Option<(UserRecord, u64)>, SessionStoreError> {
    let entry = store
        .entry(subjects::user_key(user))
        .await
        .map_err(|e| SessionStoreError::Nats(e.into()))?;
    match entry {
        Some(entry) if entry.operation == Operation::Put => Ok(Some((
            serde_json::from_slice(&entry.value)?,
            entry.revision,
        ))),
        _ => Ok(None),
    }
}

const CAS_ATTEMPTS: usize = 16;

/// Applies `change` to the user's record (an empty one when it has none)
/// with compare-and-set, as `sessions::update` does for a session.
pub async fn update<E>(
    store: &kv::Store,
    user: &UserKey,
    mut change: impl FnMut(&mut UserRecord) -> Result<bool, E>,
) -> Result<Result<UserRecord, E>, SessionStoreError> {
    let key = subjects::user_key(user);
    for _ in 0..CAS_ATTEMPTS {
        let (mut record, revision) = load(store, user).await?.unwrap_or_default();
        match change(&mut record) {
            Err(e) => return Ok(Err(e)),
            Ok(false) => return Ok(Ok(record)),
            Ok(true) => {}
        }
        let value: bytes::Bytes = serde_json::to_vec(&record)?.into();
        // Revision 0: the key must not exist yet (a create).
        let written = if revision == 0 {
            store
                .create(&key, value)
                .await
                .map(|_| ())
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => None,
                    _ => Some(SessionStoreError::Nats(e.into())),
                })
        } else {
            match store.update(&key, value, revision).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(None),
                Err(e) if is_wrong_last_sequence(&e) => Err(None),
                Err(e) => Err(Some(SessionStoreError::Nats(e.into()))),
            }
        };
        match written {
            Ok(()) => return Ok(Ok(record)),
            Err(None) => continue,
            Err(Some(e)) => return Err(e),
        }
    }
    Err(SessionStoreError::Contended)
}

/// When the user's tokens were last revoked (ms), if ever.
pub async fn revoked_before(
    store: &kv::Store,
    user: &UserKey,
) -> Result<Option<u64>, SessionStoreError> {
    let value = store
        .get(subjects::user_revoked_key(user))
        .await
        .map_err(|e| SessionStoreError::Nats(e.into()))?;
    Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
}

/// Records a revocation at `at_ms`: tokens issued at or before it are refused.
pub async fn revoke(
    store: &kv::Store,
    user: &UserKey,
    at_ms: u64,
) -> Result<(), SessionStoreError> {
    store
        .put(subjects::user_revoked_key(user), at_ms.to_string().into())
        .await
        .map(|_| ())
        .map_err(|e| SessionStoreError::Nats(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_one_trimmed_line() {
        assert_eq!(title_of("  What is\n\tNATS?  "), "What is NATS?");
        let long = "word ".repeat(40);
        let title = title_of(&long);
        assert_eq!(title.chars().count(), TITLE_CHARS);
        assert!(title.ends_with('…'));
        assert_eq!(title_of("a\u{7}b"), "ab");
    }

    #[test]
    fn notices_round_trip() {
        let notice = UserNotice::Session {
            change: SessionChange::AnswerFinished,
            session_id: SessionId::new(),
            session: None,
        };
        let back: UserNotice = serde_json::from_slice(&notice.to_payload()).unwrap();
        assert_eq!(back, notice);
        let revoked = UserNotice::Revoked { before_ms: 5 };
        assert_eq!(
            serde_json::to_string(&revoked).unwrap(),
            r#"{"type":"revoked","before_ms":5}"#
        );
    }
}
