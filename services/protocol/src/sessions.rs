//! Reading and changing a session's record in the `chat_sessions` bucket.
//! Every change is a compare-and-set on the key's revision, retried on a
//! conflict, so gateways and workers never overwrite each other's updates.

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::ErrorCode;

use crate::ids::SessionId;
use crate::records::SessionRecord;
use crate::subjects;

#[derive(Debug, thiserror::Error)]
pub enum SessionStoreError {
    #[error("session not found")]
    NotFound,
    #[error("session record unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("session store: {0}")]
    Nats(async_nats::Error),
    #[error("session record kept changing under us")]
    Contended,
}

/// Whether a compare-and-set write (`Nats-Expected-Last-Subject-Sequence`,
/// a KV update) was refused because the subject moved on. JetStream says so
/// with error 10071 ("wrong last sequence: n") or, from a clustered
/// stream's leader, 10164 ("wrong last sequence"); async-nats 0.51 knows
/// only the first and reports the second as an unspecific failure, so a
/// conflict on an R3 stream would end the write instead of retrying it.
pub fn is_wrong_last_sequence(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(error) = next {
        if let Some(api) = error.downcast_ref::<async_nats::jetstream::Error>() {
            let code = api.error_code();
            return code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT;
        }
        next = error.source();
    }
    false
}

/// A record and the KV revision it was read at.
#[derive(Clone, Debug)]
pub struct Versioned {
    pub record: SessionRecord,
    pub revision: u64,
}

/// Reads a session's record; `None` for an unknown (or expired) session.
pub async fn load(
    store: &kv::Store,
    session: SessionId,
) -> Result<Option<Versioned>, SessionStoreError> {
    let entry = store
        .entry(subjects::session_key(session))
        .await
        .map_err(|e| SessionStoreError::Nats(e.into()))?;
    match entry {
        Some(entry) if entry.operation == Operation::Put => Ok(Some(Versioned {
            record: serde_json::from_slice(&entry.value)?,
            revision: entry.revision,
        })),
        _ => Ok(None),
    }
}

/// Stores a new session; fails if the key exists.
pub async fn create(
    store: &kv::Store,
    session: SessionId,
    record: &SessionRecord,
) -> Result<u64, SessionStoreError> {
    let value = serde_json::to_vec(record)?;
    store
        .create(subjects::session_key(session), value.into())
        .await
        .map_err(|e| SessionStoreError::Nats(e.into()))
}

/// Removes a session's record (revocation): its token opens nothing any
/// more. Purged, not only deleted, so no earlier revision can be read.
pub async fn remove(store: &kv::Store, session: SessionId) -> Result<(), SessionStoreError> {
    store
        .purge(subjects::session_key(session))
        .await
        .map_err(|e| SessionStoreError::Nats(e.into()))
}

/// How often a compare-and-set is retried before giving up: conflicts come
/// from a handful of writers per session, never from many.
const CAS_ATTEMPTS: usize = 16;

/// Applies `change` to the session's record with compare-and-set. `change`
/// returns `Ok(true)` to write, `Ok(false)` to leave the record as it is, or
/// an error of the caller's that aborts (e.g. a limit reached). It may run
/// more than once, on a fresh copy, when another writer got there first.
pub async fn update<E>(
    store: &kv::Store,
    session: SessionId,
    mut change: impl FnMut(&mut SessionRecord) -> Result<bool, E>,
) -> Result<Result<SessionRecord, E>, SessionStoreError> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(Versioned {
            mut record,
            revision,
        }) = load(store, session).await?
        else {
            return Err(SessionStoreError::NotFound);
        };
        match change(&mut record) {
            Err(e) => return Ok(Err(e)),
            Ok(false) => return Ok(Ok(record)),
            Ok(true) => {}
        }
        let value = serde_json::to_vec(&record)?;
        match store
            .update(subjects::session_key(session), value.into(), revision)
            .await
        {
            Ok(_) => return Ok(Ok(record)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) if is_wrong_last_sequence(&e) => continue,
            Err(e) => return Err(SessionStoreError::Nats(e.into())),
        }
    }
    Err(SessionStoreError::Contended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};

    /// A JetStream API error as the server sends it.
    fn api_error(err_code: u64) -> async_nats::jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 400,
            "err_code": err_code,
            "description": "wrong last sequence"
        }))
        .unwrap()
    }

    #[test]
    fn both_codes_of_a_moved_subject_are_a_conflict() {
        // What a clustered stream's leader answers, as async-nats 0.51 wraps it.
        let constant = PublishError::with_source(PublishErrorKind::Other, api_error(10164));
        assert!(is_wrong_last_sequence(&constant));
        let update: kv::UpdateError = constant.into();
        assert_eq!(update.kind(), kv::UpdateErrorKind::Other);
        assert!(is_wrong_last_sequence(&update));
        let numbered =
            PublishError::with_source(PublishErrorKind::WrongLastSequence, api_error(10071));
        assert!(is_wrong_last_sequence(&numbered));
    }

    #[test]
    fn other_failures_are_not_a_conflict() {
        let other = PublishError::with_source(PublishErrorKind::Other, api_error(10077));
        assert!(!is_wrong_last_sequence(&other));
        assert!(!is_wrong_last_sequence(&PublishError::new(
            PublishErrorKind::TimedOut
        )));
    }
}
