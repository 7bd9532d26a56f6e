//! Faults a test can ask a running gateway to make up (hidden flags, all
//! off by default): what cannot be forced from outside without timing.

use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};

use crate::config::GatewayConfig;

pub struct TestHooks {
    /// Job publish acks still to be reported lost.
    job_acks_to_lose: AtomicU64,
    /// NATS replies still to be lost with their connection.
    nats_replies_to_lose: AtomicU64,
    /// Retried job publishes still to find no stream leader.
    leaderless_job_retries: AtomicU64,
    /// Replays still to read the session's last event one short.
    stale_replay_reads: AtomicU64,
}

impl TestHooks {
    pub fn new(config: &GatewayConfig) -> Self {
        Self {
            job_acks_to_lose: AtomicU64::new(config.test_lose_job_acks),
            nats_replies_to_lose: AtomicU64::new(config.test_lose_nats_replies),
            leaderless_job_retries: AtomicU64::new(config.test_leaderless_job_retries),
            stale_replay_reads: AtomicU64::new(config.test_stale_replay_reads),
        }
    }

    /// Whether the request about to be sent loses its reply with its
    /// connection (`--test-lose-nats-replies`).
    pub fn lose_nats_reply(&self) -> bool {
        take_one(&self.nats_replies_to_lose)
    }

    /// Called after a job was stored: a time-out while acks are still to
    /// be lost (`--test-lose-job-acks`), else `Ok`.
    pub fn lose_job_ack(&self) -> Result<(), PublishError> {
        if take_one(&self.job_acks_to_lose) {
            Err(PublishError::new(PublishErrorKind::TimedOut))
        } else {
            Ok(())
        }
    }
}

impl TestHooks {
    /// Called before a job publish is tried again: "no stream" while such
    /// tries are still to be made up (`--test-leaderless-job-retries`).
    pub fn leaderless_job_retry(&self) -> Result<(), PublishError> {
        if take_one(&self.leaderless_job_retries) {
            Err(PublishError::new(PublishErrorKind::StreamNotFound))
        } else {
            Ok(())
        }
    }
}

impl TestHooks {
    /// Whether the replay about to start (an attach or `resume` with
    /// `after_seq`, an SSE resume, a REST page) reads the session's last
    /// event one short, as a replica behind would
    /// (`--test-stale-replay-reads`).
    pub fn stale_replay_read(&self) -> bool {
        take_one(&self.stale_replay_reads)
    }
}

/// Takes one from `left` if any are left.
fn take_one(left: &AtomicU64) -> bool {
    left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}
