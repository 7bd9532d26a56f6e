//! Holding a job whose events could not be stored until the session's
//! stream takes writes again, before handing it back.
//!
//! When the node leading `CHAT_EVENTS` is lost, the stream takes no writes
//! until the other replicas have elected a leader: nats-server waits 4–9 s
//! for a lost leader before a follower campaigns (not configurable). An
//! attempt whose chunks found no leader fails at once; handed straight
//! back, it is delivered again, fails again, and a few rounds use up the
//! job's deliveries before the election is over (`chatctl recovery
//! --cluster`: `failed_answer`, retries exhausted after a leader kill).
//! Held here (its lease kept by `Job::keeping_the_lease`, so it stays this
//! worker's), the job goes back once a leader answers, and its next attempt
//! can store its answer.

use std::time::Duration;

use tokio::time::Instant;

use super::Job;

/// How long a job is held at most: longer than an election takes, shorter
/// than a user waits.
const HOLD_AT_MOST: Duration = Duration::from_secs(20);
/// The pause between two looks at the stream.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// How long one look waits for an answer: a stream without a leader does
/// not answer at all, and the client's own time-out (5 s) would hand the
/// job back seconds after the new leader was elected.
const LOOK_TIMEOUT: Duration = Duration::from_secs(1);

impl Job {
    /// Returns once the session's stream has a leader (at once on a stream
    /// that never lost it), after [`HOLD_AT_MOST`], or when the worker
    /// stops; `true` when it has one.
    pub(super) async fn hold_until_writable(&self) -> bool {
        let started = Instant::now();
        let mut held = false;
        loop {
            let look = async {
                let writable = self.stream_has_a_leader().await;
                if !writable {
                    tokio::time::sleep(LOOK_EVERY).await;
                }
                writable
            };
            let writable = tokio::select! {
                writable = look => writable,
                () = self.ctx.abort.cancelled() => return false,
            };
            if writable || started.elapsed() >= HOLD_AT_MOST {
                if held {
                    tracing::info!(
                        writable,
                        held_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "held the job while the session's stream had no leader"
                    );
                }
                return writable;
            }
            held = true;
        }
    }

    /// Whether `CHAT_EVENTS` answers with a leader (a single server always
    /// does; a cluster's stream has none during an election).
    async fn stream_has_a_leader(&self) -> bool {
        match tokio::time::timeout(LOOK_TIMEOUT, self.ctx.layout.events.get_info()).await {
            Ok(Ok(info)) => info
                .cluster
                .as_ref()
                .is_none_or(|cluster| cluster.leader.is_some()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "asking for the session's stream");
                false
            }
            Err(_) => false,
        }
    }
}
