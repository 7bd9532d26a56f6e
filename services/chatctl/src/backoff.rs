//! How a client waits before it tries again: the recovery tester's clients
//! reconnecting after a drop, and their retries of a refused send.

use std::time::Duration;

/// Exponential backoff from 50 ms to 1 s, with a little jitter so hundreds
/// of clients do not knock at the same instant.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(1);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    pub fn peek(&self) -> Duration {
        self.next
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    pub async fn wait(&mut self) {
        let jitter =
            Duration::from_millis(rand::random_range(0..=self.next.as_millis() as u64 / 4));
        tokio::time::sleep(self.next + jitter).await;
        self.next = (self.next * 2).min(Self::MAX);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}
