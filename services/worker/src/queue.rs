//! Pulling jobs off the `CHAT_REQUESTS` work-queue: only as many as there
//! are free slots, each run as its own task.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::JobContext;
use crate::job::{self, QueueReply};

/// How long one pull request waits for jobs. Short, so a stopping worker
/// has no request outstanding for long; idle pulls cost one small request.
const PULL_EXPIRES: Duration = Duration::from_millis(500);
/// Pause after this worker is connected again before it pulls: every other
/// worker of a restarted server is connected again within this of the
/// first (`protocol::connect`: at most 250 ms between tries).
const PULL_AFTER_RECONNECT: Duration = protocol::connect::RECONNECT_SPREAD;
/// How often a worker whose connection was lost looks whether it is back.
const RECONNECT_POLL: Duration = Duration::from_millis(20);
/// Pause after a failed pull (NATS unreachable) before the next.
const PULL_RETRY: Duration = Duration::from_millis(250);

/// Pulls jobs while there are free slots, until `stop` fires. Only as many
/// jobs are requested as can start at once: a prefetched job would sit with
/// its `ack_wait` ticking.
pub(crate) async fn pull(
    ctx: Arc<JobContext>,
    consumer: PullConsumer,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        // Read before the request: a pull request the server took before a
        // lost connection is gone with it, and the client would wait for
        // its expiry plus 5 s before asking again.
        let losses = ctx.connection.losses();
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut messages = match batch {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, "pulling jobs failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(PULL_RETRY) => continue,
                }
            }
        };
        // The request stays open until it expires or is filled. A job that
        // arrives after a stop still runs here, inside the shutdown grace:
        // handing it back would cost it one of its `max_deliver` attempts
        // (a rolling restart of every worker could exhaust them).
        let mut lost = false;
        loop {
            let next = tokio::select! {
                // Jobs already delivered are taken before a loss is noticed.
                biased;
                next = messages.next() => next,
                _ = ctx.connection.lost_since(losses) => {
                    tracing::debug!("NATS connection lost; pulling again once it settles");
                    lost = true;
                    break;
                }
            };
            let Some(next) = next else { break };
            let message = match next {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!(error = %e, "pull request ended");
                    break;
                }
            };
            let Some(permit) = permits.pop() else {
                // More than was asked for: cannot happen, but never hold it.
                QueueReply::Nak(None).send(&message).await;
                continue;
            };
            let ctx = ctx.clone();
            jobs.spawn(async move {
                job::run(ctx, message).await;
                drop(permit);
            });
        }
        if lost {
            // A server that restarted may hand out again a job another
            // worker still runs (its delivery state was not yet on disk).
            // The new run's claim notice stops the old one only once that
            // worker is subscribed again: give every worker time to
            // reconnect before taking jobs, counted from this one's own
            // reconnect (a fixed pause from the loss would be too short
            // for a slow restart and needlessly long for a quick one).
            let client = ctx.js.client();
            let settled = async {
                while client.connection_state() != async_nats::connection::State::Connected {
                    tokio::time::sleep(RECONNECT_POLL).await;
                }
                tokio::time::sleep(PULL_AFTER_RECONNECT).await;
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                () = settled => {}
            }
        }
    }
}
