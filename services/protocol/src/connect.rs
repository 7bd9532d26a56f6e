//! How gateways and workers connect to NATS. The client's defaults suit a
//! long-lived app that can wait: a reconnect delay that doubles up to 4 s,
//! a 5 s connect timeout, a ping every 60 s. A chat stream cannot wait that
//! long, so every service connects with [`options`]: reconnects come within
//! a quarter of a second of the server taking connections again, a node
//! that does not answer is given up in a second (the next seed is tried),
//! and a silent connection (a partitioned node) is noticed within about
//! three ping intervals. [`ConnectionWatch`] lets work that waits on a reply
//! (a publish ack) give up as soon as the connection it was sent on is gone:
//! that reply can no longer come.

use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use tokio::sync::watch;

/// The pause before the first reconnect attempt after a lost connection is
/// none; later attempts wait this long at first, doubling...
const RECONNECT_DELAY_FIRST: Duration = Duration::from_millis(25);
/// ...up to this. A restarted nats-server takes connections within tens of
/// milliseconds, a cluster node's clients move to another node at once.
const RECONNECT_DELAY_MAX: Duration = Duration::from_millis(250);
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
