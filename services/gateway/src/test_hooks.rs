//! Faults a test can ask a running gateway to make up (hidden flags, all
//! off by default): what cannot be forced from outside without timing.

use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};

use crate::config::GatewayConfig;

pub struct TestHooks {
    /// Job publish acks still to be reported lost.
    job_acks_to_lose: AtomicU64,
}

impl TestHooks {
    pub fn new(config: &GatewayConfig) -> Self {
        Self {
            job_acks_to_lose: AtomicU64::new(config.test_lose_job_acks),
        }
    }

    /// Called after a job was stored: a time-out while acks are still to
    /// be lost (`--test-lose-job-acks`), else `Ok`.
    pub fn lose_job_ack(&self) -> Result<(), PublishError> {
        let lose = self
            .job_acks_to_lose
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if lose {
            Err(PublishError::new(PublishErrorKind::TimedOut))
        } else {
            Ok(())
        }
    }
}
