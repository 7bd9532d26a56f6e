//! How gateways and workers connect to NATS. The client's defaults suit a
//! long-lived app that can wait: a reconnect delay that doubles up to 4 s,
//! a 5 s connect timeout, a ping every 60 s. A chat stream cannot wait that
//! long, so every service connects with [`options`]: reconnects come within
//! a quarter of a second of the server taking connections again, a node
//! that does not answer is given up in a second (the next seed is tried),
//! and a silent connection (a partitioned node) is noticed within about
//! three ping intervals. [`ConnectionWatch`] lets work that waits on a reply
//! (a publish ack) give up as soon as the connection it was sent on is gone:
//! that reply can no longer come. A request that is safe to send twice (a
//! read, a deduplicated publish, a compare-and-set) is sent again on the
//! new connection instead ([`ConnectionWatch::retry_when_lost`]): a client
//! waiting on it then waits for the reconnect, not for the request's 5 s
//! time-out.

use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use tokio::sync::watch;

/// The pause before the first reconnect attempt after a lost connection is
/// none; later attempts wait this long at first, doubling...
const RECONNECT_DELAY_FIRST: Duration = Duration::from_millis(25);
/// ...up to this. A restarted nats-server takes connections within tens of
/// milliseconds, a cluster node's clients move to another node at once.
const RECONNECT_DELAY_MAX: Duration = Duration::from_millis(250);
/// Every client of a restarted server is connected again within this of the
/// first one: each tries at most [`RECONNECT_DELAY_MAX`] after its last
/// try, and a handshake takes well under that.
pub const RECONNECT_SPREAD: Duration = Duration::from_millis(500);
/// A server that accepts no TCP connection (nor sends its INFO) this long
/// is skipped for the next one in the seed list.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The client pings this often and drops a connection after two unanswered
/// pings: a node cut off by a partition is noticed within ~3 intervals.
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// The delay before reconnect attempt `attempts` (1 = the first).
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    RECONNECT_DELAY_FIRST
        .saturating_mul(1 << doublings)
        .min(RECONNECT_DELAY_MAX)
}

/// The servers of a `NATS_URL`: one URL, or several separated by commas
/// (the seed list of a cluster; the client learns the other nodes from
/// any of them, and falls back on the rest when one is down at start).
pub fn seed_list(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// Counts the connections a client lost, so work can tell whether the
/// connection it started on is still the current one.
#[derive(Clone, Debug)]
pub struct ConnectionWatch {
    losses: watch::Receiver<u64>,
}

impl ConnectionWatch {
    /// How many connections were lost so far.
    pub fn losses(&self) -> u64 {
        *self.losses.borrow()
    }

    /// Resolves once a connection is lost after `seen` losses (at once if
    /// that happened already); never resolves while the connection holds.
    pub async fn lost_since(&self, seen: u64) {
        let mut losses = self.losses.clone();
        // An error means the client is gone: nothing will ever be lost again.
        if losses.wait_for(|n| *n > seen).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Tries of [`ConnectionWatch::retry_when_lost`]: one loss is a restart or
/// a failover; a connection lost this often in a row is no place to wait.
pub const RETRIES_WHEN_LOST: usize = 3;

/// The connection was lost during every try of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the NATS connection was lost {RETRIES_WHEN_LOST} times while waiting for a reply")]
pub struct ConnectionLost;

impl ConnectionWatch {
    /// Runs `request` (made anew for each try) until it finishes on a
    /// connection that held while it ran, at most [`RETRIES_WHEN_LOST`]
    /// times. A try whose connection is lost is dropped at once: its reply
    /// would have come on that connection and can no longer come, so
    /// waiting for it costs the request's whole time-out (5 s) while the
    /// client is connected again within milliseconds. The next try is sent
    /// on the new connection (the client queues it until it is connected).
    /// Only for requests that may reach the server twice without harm.
    pub async fn retry_when_lost<T, F, Fut>(&self, mut request: F) -> Result<T, ConnectionLost>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        for _ in 0..RETRIES_WHEN_LOST {
            let seen = self.losses();
            tokio::select! {
                done = request() => return Ok(done),
                () = self.lost_since(seen) => {
                    tracing::debug!("NATS connection lost while waiting for a reply; asking again");
                }
            }
        }
        Err(ConnectionLost)
    }
}

/// Connect options of every service, named `name` (shown in the server's
/// `/connz`), and the watch of its connection losses. The first connect
/// retries too: a service started before NATS (or before a cluster has
/// formed) waits for it instead of exiting; `setup::verify_when_ready`
/// says what it waits for.
pub fn options(name: &str) -> (ConnectOptions, ConnectionWatch) {
    let (lost, losses) = watch::channel(0u64);
    let options = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(CONNECT_TIMEOUT)
        .ping_interval(PING_INTERVAL)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            if matches!(event, Event::Disconnected) {
                lost.send_modify(|n| *n += 1);
            }
            async {}
        });
    (options, ConnectionWatch { losses })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A watch whose losses the test makes.
    fn watch() -> (watch::Sender<u64>, ConnectionWatch) {
        let (lost, losses) = watch::channel(0u64);
        (lost, ConnectionWatch { losses })
    }

    #[tokio::test]
    async fn a_request_whose_connection_is_lost_is_asked_again() {
        let (lost, connection) = watch();
        let tries = Arc::new(AtomicUsize::new(0));
        let answered = connection.retry_when_lost(|| {
            let tries = tries.clone();
            let lost = lost.clone();
            async move {
                if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                    // The first try's reply never comes: its connection goes.
                    lost.send_modify(|n| *n += 1);
                    std::future::pending::<()>().await;
                }
                "answer"
            }
        });
        let answered = tokio::time::timeout(Duration::from_secs(30), answered)
            .await
            .expect("the lost try was not given up");
        assert_eq!(answered, Ok("answer"));
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_on_a_connection_that_holds_is_asked_once() {
        let (_lost, connection) = watch();
        let tries = AtomicUsize::new(0);
        let answered = connection
            .retry_when_lost(|| async {
                tries.fetch_add(1, Ordering::SeqCst);
                7
            })
            .await;
        assert_eq!(answered, Ok(7));
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_lost_on_every_try_gives_up() {
        let (lost, connection) = watch();
        let answered = connection
            .retry_when_lost(|| {
                let lost = lost.clone();
                async move {
                    lost.send_modify(|n| *n += 1);
                    std::future::pending::<()>().await
                }
            })
            .await;
        assert_eq!(answered, Err(ConnectionLost));
    }

    #[test]
    fn a_seed_list_is_split_on_commas() {
        assert_eq!(seed_list("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(
            seed_list("nats://a:4222, nats://b:4222,"),
            ["nats://a:4222", "nats://b:4222"]
        );
    }

    #[test]
    fn reconnects_start_at_once_and_never_wait_longer_than_the_cap() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), RECONNECT_DELAY_FIRST);
        assert_eq!(reconnect_delay(3), RECONNECT_DELAY_FIRST * 2);
        assert_eq!(reconnect_delay(1_000), RECONNECT_DELAY_MAX);
        assert_eq!(reconnect_delay(usize::MAX), RECONNECT_DELAY_MAX);
    }
}
