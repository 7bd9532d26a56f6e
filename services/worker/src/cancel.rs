//! Cancelling jobs: one core subscription to every session's cancel subject
//! feeds a map from (session, message id) to the cancellation token of the
//! job running it; a job not yet started is stopped by its KV cancel flag
//! instead. Message ids are chosen by clients, so every key holds the
//! session: a notice on one session's subject never touches another's job.
//!
//! A job registers its token *before* it reads the flag. The gateway puts the
//! flag before it publishes the notice, so a notice that arrived before the
//! registration is still seen through the flag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use futures::StreamExt;
use protocol::{subjects, CancelNotice, MessageId, SessionId};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The running jobs of this worker that a cancel notice can stop.
#[derive(Clone, Default)]
pub struct CancelRegistry {
    inner: Arc<Registry>,
}

#[derive(Default)]
struct Registry {
    running: Mutex<HashMap<JobKey, Running>>,
    serial: AtomicU64,
    /// Makes claims unique across workers (with the serial).
    node: Mutex<String>,
}

/// A job as cancels name it: its session and its message.
type JobKey = (SessionId, MessageId);

struct Running {
    serial: u64,
    /// Fires on a user's cancel.
    cancel: CancellationToken,
    /// Fires when another worker claimed the message.
    superseded: CancellationToken,
    claim: String,
    /// The attempt running, as its admit step last told.
    attempt: u32,
}

impl CancelRegistry {
    /// Registers a job; the token fires on a cancel notice for `message` of
    /// `session` until the returned guard drops.
    pub fn register(&self, session: SessionId, message: MessageId, attempt: u32) -> CancelGuard {
        let key = (session, message);
        let serial = self.inner.serial.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let superseded = CancellationToken::new();
        let node = self
            .inner
            .node
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default();
        let claim = format!("{node}/{}/{serial}", std::process::id());
        if let Ok(mut running) = self.inner.running.lock() {
            let earlier = running.insert(
                key,
                Running {
                    serial,
                    cancel: token.clone(),
                    superseded: superseded.clone(),
                    claim: claim.clone(),
                    attempt,
                },
            );
            // The same message delivered to this worker again (its lease
            // was lost, e.g. across a nats-server restart): the earlier run
            // stops as it would for another worker's claim, which this
            // worker's own claim notice cannot tell it.
            if let Some(earlier) = earlier {
                earlier.superseded.cancel();
            }
        }
        CancelGuard {
            registry: self.clone(),
            key,
            serial,
            token,
            superseded,
            claim,
            attempt: AtomicU32::new(attempt),
            claimed: AtomicBool::new(false),
        }
    }

    /// Names this worker in its claims.
    pub fn set_node(&self, node: &str) {
        if let Ok(mut n) = self.inner.node.lock() {
            *n = node.to_string();
        }
    }

    /// Another worker claimed the job: stop ours unless the claim is ours
    /// or comes from a lower attempt than ours (`None`: any attempt).
    pub fn superseded(
        &self,
        session: SessionId,
        message: MessageId,
        claim: &str,
        attempt: Option<u32>,
    ) -> bool {
        let token = match self.inner.running.lock() {
            Ok(running) => running
                .get(&(session, message))
                .filter(|r| r.claim != claim && attempt.is_none_or(|a| a > r.attempt))
                .map(|r| r.superseded.clone()),
            Err(_) => None,
        };
        token.map(|t| t.cancel()).is_some()
    }

    /// Cancels the running job of `message` of `session`; false when none
    /// runs here.
    pub fn cancel(&self, session: SessionId, message: MessageId) -> bool {
        let token = match self.inner.running.lock() {
            Ok(running) => running.get(&(session, message)).map(|r| r.cancel.clone()),
            Err(_) => None,
        };
        match token {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// A registered job; unregisters it when dropped.
pub struct CancelGuard {
    registry: CancelRegistry,
    key: JobKey,
    serial: u64,
    token: CancellationToken,
    superseded: CancellationToken,
    claim: String,
    attempt: AtomicU32,
    /// Whether this run announced its claim (its admit step ran once).
    claimed: AtomicBool,
}

impl CancelGuard {
    /// Notes that this run announced its claim.
    pub fn claimed(&self) {
        self.claimed.store(true, Ordering::Relaxed);
    }

    /// Whether this run announced its claim before.
    pub fn has_claimed(&self) -> bool {
        self.claimed.load(Ordering::Relaxed)
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Fires when another worker took this message over.
    pub fn superseded(&self) -> &CancellationToken {
        &self.superseded
    }

    /// The attempt number grew (the stream shows an earlier run the
    /// delivery count missed): claims are compared with the new one.
    pub fn set_attempt(&self, attempt: u32) {
        self.attempt.store(attempt, Ordering::Relaxed);
        if let Ok(mut running) = self.registry.inner.running.lock() {
            if let Some(r) = running
                .get_mut(&self.key)
                .filter(|r| r.serial == self.serial)
            {
                r.attempt = attempt;
            }
        }
    }

    /// The notice that tells every other worker this job is ours now.
    pub fn claim_notice(&self) -> CancelNotice {
        CancelNotice {
            message_id: self.key.1,
            claimed_by: Some(self.claim.clone()),
            attempt: Some(self.attempt.load(Ordering::Relaxed)),
        }
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut running) = self.registry.inner.running.lock() {
            // Only our own entry: a redelivery of the same message may have
            // registered after us.
            if running
                .get(&self.key)
                .is_some_and(|r| r.serial == self.serial)
            {
                running.remove(&self.key);
            }
        }
    }
}

/// Subscribes to every cancel notice and cancels matching running jobs
/// until `stop` fires.
pub async fn listen(
    client: async_nats::Client,
    registry: CancelRegistry,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, async_nats::SubscribeError> {
    let mut notices = client.subscribe(subjects::CANCEL_ALL).await?;
    Ok(tokio::spawn(async move {
        while let Some(Some(message)) = stop.run_until_cancelled(notices.next()).await {
            let Some(session) = subjects::session_of_cancel(&message.subject) else {
                tracing::warn!(subject = %message.subject, "a cancel notice on a subject with no session");
                continue;
            };
            match serde_json::from_slice::<CancelNotice>(&message.payload) {
                Ok(CancelNotice {
                    message_id,
                    claimed_by: Some(claim),
                    attempt,
                }) => {
                    if registry.superseded(session, message_id, &claim, attempt) {
                        tracing::info!(%message_id, %claim, ?attempt, "another worker took this job over; stopping ours");
                    }
                }
                Ok(notice) => {
                    if registry.cancel(session, notice.message_id) {
                        tracing::debug!(message_id = %notice.message_id, "cancel notice for a running job");
                    }
                }
                Err(e) => {
                    tracing::warn!(subject = %message.subject, error = %e, "unreadable cancel notice")
                }
            }
        }
        let _ = notices.unsubscribe().await;
    }))
}

/// Whether a cancel flag is set for `message` of `session`. A read error
/// counts as "not set": the job runs, and a cancel notice can still stop it.
pub async fn flag_set(sessions: &kv::Store, session: SessionId, message: MessageId) -> bool {
    match sessions
        .get(subjects::cancel_flag_key(session, message))
        .await
    {
        Ok(value) => value.is_some(),
        Err(e) => {
            tracing::warn!(message_id = %message, error = %e, "reading the cancel flag");
            false
        }
    }
}

/// Stores that `attempt` now runs `message` (see [`subjects::claim_key`]);
/// best effort: the core claim notice went out too.
pub async fn store_claim(
    sessions: &kv::Store,
    session: SessionId,
    message: MessageId,
    attempt: u32,
) {
    let key = subjects::claim_key(session, message);
    if let Err(e) = sessions
        .put(key, protocol::records::claim_value(attempt))
        .await
    {
        tracing::warn!(message_id = %message, error = %e, "storing the claim");
    }
}

/// The attempt that last claimed `message`, if any claimed it. A read
/// error counts as none: the notice can still stop the earlier attempt.
pub async fn latest_claim(
    sessions: &kv::Store,
    session: SessionId,
    message: MessageId,
) -> Option<u32> {
    match sessions.get(subjects::claim_key(session, message)).await {
        Ok(value) => value.and_then(|v| protocol::records::parse_claim(&v)),
        Err(e) => {
            tracing::warn!(message_id = %message, error = %e, "reading the claim");
            None
        }
    }
}

/// Removes a handled cancel flag (best effort: the bucket's TTL removes it anyway).
pub async fn clear_flag(sessions: &kv::Store, session: SessionId, message: MessageId) {
    if let Err(e) = sessions
        .delete(subjects::cancel_flag_key(session, message))
        .await
    {
        tracing::debug!(message_id = %message, error = %e, "deleting the cancel flag");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_delivery_of_a_running_message_supersedes_the_first_run_here() {
        let registry = CancelRegistry::default();
        let (session, message) = (SessionId::new(), MessageId::new());
        let first = registry.register(session, message, 1);
        let second = registry.register(session, message, 2);
        assert!(first.superseded().is_cancelled(), "the earlier run stops");
        assert!(!second.superseded().is_cancelled());
        drop(first);
        assert!(
            registry.cancel(session, message),
            "the first run's guard leaves the second registered"
        );
        assert!(second.token().is_cancelled());
        // The same message id in another session is another job.
        let other = registry.register(SessionId::new(), message, 1);
        assert!(!other.superseded().is_cancelled());
        assert!(!other.token().is_cancelled());
    }

    #[test]
    fn a_claim_stops_only_lower_attempts_and_never_its_own() {
        // Attempt 3 waited out an election while attempt 4 was delivered
        // elsewhere and claimed the job; attempt 3, admitted again, claims
        // too. Only attempt 3 may stop (found by the cluster recovery
        // test: both stopped, and the job's deliveries ran out).
        let (session, message) = (SessionId::new(), MessageId::new());
        let here = CancelRegistry::default();
        here.set_node("w-0");
        let third = here.register(session, message, 2);
        third.set_attempt(3);
        let fourth_claim = "w-1/1/7";
        assert!(!here.superseded(session, message, fourth_claim, Some(3)));
        assert!(
            !third.superseded().is_cancelled(),
            "an equal attempt is no takeover"
        );
        assert!(here.superseded(session, message, fourth_claim, Some(4)));
        assert!(third.superseded().is_cancelled());

        let there = CancelRegistry::default();
        there.set_node("w-1");
        let fourth = there.register(session, message, 4);
        let third_claim = third.claim_notice();
        assert_eq!(third_claim.attempt, Some(3));
        let claim = third_claim.claimed_by.as_deref().unwrap_or_default();
        assert!(!there.superseded(session, message, claim, third_claim.attempt));
        assert!(
            !fourth.superseded().is_cancelled(),
            "a lower attempt's claim"
        );
        // A run's own claim never stops it; a claim with no attempt
        // stops any other run.
        let own = fourth.claim_notice();
        let own_claim = own.claimed_by.as_deref().unwrap_or_default();
        assert!(!there.superseded(session, message, own_claim, own.attempt));
        assert!(there.superseded(session, message, claim, None));
        assert!(fourth.superseded().is_cancelled());
    }
}
