//! Reading and changing a session's record in the `chat_sessions` bucket.
//! Every change is a compare-and-set on the key's revision, retried on a
//! conflict, so gateways and workers never overwrite each other's updates.

use async_nats::jetstream::kv::{self, Operation};

use crate::conflicts::is_wrong_last_sequence;
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

/// A record and the KV revision it was read at.
#[derive(Clone, Debug)]
pub struct Versioned {
    pub record: SessionRecord,
    pub revision: u64,
}

/// Reads a session's record; `None` for an unknown (or expired) session.
///
/// A miss is asked again of the stream's leader before it is believed: on
/// a cluster a direct get may be answered by a replica that has not yet
/// applied the record's creation (one catching up after a restart, or
/// behind a lossy link), and a session refused as unknown is a question
/// lost (`chatctl recovery --cluster --seed 2`: `refused: not_found` for a
/// session created seconds before). A hit needs no such check: a record
/// read stale is caught by the compare-and-set of any change.
pub async fn load(
    store: &kv::Store,
    session: SessionId,
) -> Result<Option<Versioned>, SessionStoreError> {
    let key = subjects::session_key(session);
    let entry = store
        .entry(key.as_str())
        .await
        .map_err(|e| SessionStoreError::Nats(e.into()))?;
    match entry {
        Some(entry) if entry.operation == Operation::Put => Ok(Some(Versioned {
            record: serde_json::from_slice(&entry.value)?,
            revision: entry.revision,
        })),
        Some(_) => Ok(None),
        None if store.stream.cached_info().config.allow_direct => {
            load_from_leader(store, &key).await
        }
        None => Ok(None),
    }
}

/// The key's last message as the stream's leader holds it.
async fn load_from_leader(
    store: &kv::Store,
    key: &str,
) -> Result<Option<Versioned>, SessionStoreError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let subject = format!("{}{key}", store.prefix);
    match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => {
            let removed =
                message.headers.get(KV_OPERATION).is_some_and(|op| {
                    op.as_str().parse::<Operation>().ok() != Some(Operation::Put)
                }) || message
                    .headers
                    .get(async_nats::header::NATS_MARKER_REASON)
                    .is_some();
            if removed {
                return Ok(None);
            }
            Ok(Some(Versioned {
                record: serde_json::from_slice(&message.payload)?,
                revision: message.sequence,
            }))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(SessionStoreError::Nats(e.into())),
    }
}

/// The header a bucket's delete and purge markers carry (async-nats keeps
/// its own name for it private).
const KV_OPERATION: &str = "KV-Operation";

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
    change: impl FnMut(&mut SessionRecord) -> Result<bool, E>,
) -> Result<Result<SessionRecord, E>, SessionStoreError> {
    update_from(store, session, None, change).await
}

/// [`update`], starting from `known`: the record as the caller read it a
/// moment ago (a request that has just checked its token against it), so
/// the record is not read twice. The first compare-and-set is against
/// `known`'s revision: a record changed since is read again, as after any
/// lost race, and `change` runs on the fresh copy.
pub async fn update_from<E>(
    store: &kv::Store,
    session: SessionId,
    mut known: Option<Versioned>,
    mut change: impl FnMut(&mut SessionRecord) -> Result<bool, E>,
) -> Result<Result<SessionRecord, E>, SessionStoreError> {
    for _ in 0..CAS_ATTEMPTS {
        let current = match known.take() {
            Some(known) => Some(known),
            None => load(store, session).await?,
        };
        let Some(Versioned {
            mut record,
            revision,
        }) = current
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
