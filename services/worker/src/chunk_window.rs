//! The adaptive coalescing window: how long a chunk may gather tokens,
//! from how backed up the path to NATS is.
//!
//! A fixed window sends as many chunks under overload as when idle (one per
//! window per stream), so once the path is full its queues grow instead of
//! its chunks, and every token waits in them. The window here follows the
//! publish-ack latency of this worker's chunks (every job shares one NATS
//! connection, so one job's acks speak for all): the base window while acks
//! come back quickly, `gain` × the smoothed ack latency when they do not, up
//! to a bound. Fewer, larger chunks then cost the path less, which brings
//! the ack latency down again: the window settles where the path keeps up.
//!
//! The smoothing is a mean over about [`SMOOTHING`], alike rising and
//! falling: a backlog that lasts is answered within a few of it, while a
//! moment of slow acks (a process waiting for a core on a busy machine,
//! not a path that cannot keep up) barely moves the window, which would
//! otherwise hold every token back for the jitter alone. It is time-based,
//! so it does not depend on how many chunks are in flight.
//! [`WindowLaw`] is the pure arithmetic, fed latencies and instants by the
//! caller so it is tested without a clock; [`ChunkWindow`] shares it between
//! the jobs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How many times the smoothed ack latency the window becomes under load
/// (the default of `CHUNK_WINDOW_GAIN`).
pub const GAIN: f64 = 6.0;
/// Time constant of the ack latency's smoothing, rising and falling.
pub const SMOOTHING: Duration = Duration::from_millis(250);

/// The window as a function of the ack latencies seen so far.
#[derive(Clone, Debug)]
pub struct WindowLaw {
    base: Duration,
    max: Duration,
    gain: f64,
    /// Smoothed ack latency, seconds.
    smoothed: f64,
    last: Option<Instant>,
}

impl WindowLaw {
    /// `base`: the window on a quiet path; `max`: its bound under load
    /// (a `max` below `base` means a fixed window of `base`); `gain`: the
    /// window under load in smoothed ack latencies.
    pub fn new(base: Duration, max: Duration, gain: f64) -> Self {
        Self {
            base,
            max: max.max(base),
            gain: if gain.is_finite() {
                gain.max(0.0)
            } else {
                GAIN
            },
            smoothed: 0.0,
            last: None,
        }
    }

    /// Takes in one chunk's publish-ack latency, observed at `now`.
    pub fn observe(&mut self, latency: Duration, now: Instant) {
        let sample = latency.as_secs_f64();
        let elapsed = self
            .last
            .map_or(Duration::MAX, |last| now.saturating_duration_since(last));
        self.last = Some(now);
        // The weight a sample gets grows with the time since the last one:
        // a thousand acks in a millisecond weigh as much as one would.
        let weight = 1.0 - (-elapsed.as_secs_f64() / SMOOTHING.as_secs_f64()).exp();
        self.smoothed += weight * (sample - self.smoothed);
    }

    /// The smoothed ack latency.
    pub fn ack_latency(&self) -> Duration {
        Duration::from_secs_f64(self.smoothed.max(0.0))
    }

    /// The window a chunk started now gets.
    pub fn window(&self) -> Duration {
        if self.base.is_zero() {
            // Zero = a chunk per token, whatever the load (the heaviest case,
            // chosen on purpose).
            return Duration::ZERO;
        }
        let scaled = Duration::try_from_secs_f64(self.smoothed * self.gain).unwrap_or(self.max);
        scaled.clamp(self.base, self.max)
    }
}

/// [`WindowLaw`] shared by every job of a worker: the publishers feed it
/// their chunks' ack latencies, the chunkers read the window from it.
#[derive(Debug)]
pub struct ChunkWindow {
    law: Mutex<WindowLaw>,
    /// The law's window in microseconds, stored at each observation (the
    /// only thing that changes it): read per token by every chunker, so a
    /// load, not a lock.
    window_us: AtomicU64,
}

impl ChunkWindow {
    pub fn new(base: Duration, max: Duration, gain: f64) -> Self {
        let law = WindowLaw::new(base, max, gain);
        Self {
            window_us: AtomicU64::new(micros(law.window())),
            law: Mutex::new(law),
        }
    }

    /// A window that never adapts.
    pub fn fixed(window: Duration) -> Self {
        Self::new(window, window, GAIN)
    }

    pub fn observe_ack(&self, latency: Duration) {
        let now = Instant::now();
        if let Ok(mut law) = self.law.lock() {
            law.observe(latency, now);
            self.window_us
                .store(micros(law.window()), Ordering::Relaxed);
        }
    }

    pub fn window(&self) -> Duration {
        Duration::from_micros(self.window_us.load(Ordering::Relaxed))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(20);
    const MAX: Duration = Duration::from_millis(200);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds `latency` every millisecond for `for_ms` milliseconds.
    fn feed(law: &mut WindowLaw, now: &mut Instant, latency: Duration, for_ms: u64) {
        for _ in 0..for_ms {
            *now += ms(1);
            law.observe(latency, *now);
        }
    }

    #[test]
    fn a_quiet_path_keeps_the_base_window() {
        let mut now = Instant::now();
        let mut law = WindowLaw::new(BASE, MAX, GAIN);
        assert_eq!(law.window(), BASE);
        feed(&mut law, &mut now, Duration::from_micros(300), 1_000);
        assert_eq!(law.window(), BASE);
        // 3 ms acks are still quick enough for the base window (6 × 3 < 20).
        feed(&mut law, &mut now, ms(3), 1_000);
        assert_eq!(law.window(), BASE);
    }

    #[test]
    fn a_backlog_grows_the_window_up_to_the_bound() {
        let mut now = Instant::now();
        let mut law = WindowLaw::new(BASE, MAX, GAIN);
        feed(&mut law, &mut now, ms(1), 100);
        // Acks at 25 ms: the window settles at 6 × 25 = 150 ms.
        feed(&mut law, &mut now, ms(25), 5 * SMOOTHING.as_millis() as u64);
        let window = law.window();
        assert!(window > ms(145) && window <= ms(150), "{window:?}");
        // A backlog that lasts is answered within about three time constants.
        let mut law = WindowLaw::new(BASE, MAX, GAIN);
        feed(&mut law, &mut now, ms(1), 100);
        feed(&mut law, &mut now, ms(25), 3 * SMOOTHING.as_millis() as u64);
        assert!(law.window() > ms(135), "{:?}", law.window());
        // A saturated path: the bound, never more.
        feed(&mut law, &mut now, ms(2_000), 1_000);
        assert_eq!(law.window(), MAX);
    }

    #[test]
    fn a_moment_of_slow_acks_keeps_the_base_window() {
        let mut now = Instant::now();
        let mut law = WindowLaw::new(BASE, MAX, GAIN);
        feed(&mut law, &mut now, ms(1), 1_000);
        // 30 ms of acks at 20 ms, as when the processes on a busy machine
        // wait for a core: the mean moves to about 3.1 ms, under the 3.3 ms
        // the base window stands for (a law following the acks' peaks,
        // quick to rise and slow to fall, widened it to about 57 ms).
        feed(&mut law, &mut now, ms(20), 30);
        assert_eq!(law.window(), BASE, "{:?}", law.ack_latency());
        feed(&mut law, &mut now, ms(1), 100);
        assert_eq!(law.window(), BASE);
    }

    #[test]
    fn the_window_falls_back_once_the_backlog_is_gone() {
        let mut now = Instant::now();
        let mut law = WindowLaw::new(BASE, MAX, GAIN);
        feed(&mut law, &mut now, ms(50), 1_000);
        assert_eq!(law.window(), MAX);
        // One quick ack amid a backlog barely moves it.
        now += ms(1);
        law.observe(Duration::ZERO, now);
        assert!(law.window() > ms(190), "{:?}", law.window());
        // A quiet path for a while: back to the base window.
        feed(&mut law, &mut now, Duration::from_micros(200), 3_000);
        assert_eq!(law.window(), BASE);
    }

    #[test]
    fn many_acks_at_one_instant_weigh_as_one() {
        let mut now = Instant::now();
        let mut law = WindowLaw::new(BASE, MAX, GAIN);
        feed(&mut law, &mut now, ms(1), 100);
        let before = law.ack_latency();
        for _ in 0..10_000 {
            law.observe(ms(500), now);
        }
        assert_eq!(law.ack_latency(), before);
    }

    #[test]
    fn zero_base_is_a_chunk_per_token_and_a_low_bound_is_a_fixed_window() {
        let mut now = Instant::now();
        let mut law = WindowLaw::new(Duration::ZERO, MAX, GAIN);
        feed(&mut law, &mut now, ms(100), 1_000);
        assert_eq!(law.window(), Duration::ZERO);
        let mut law = WindowLaw::new(BASE, ms(5), GAIN);
        feed(&mut law, &mut now, ms(100), 1_000);
        assert_eq!(law.window(), BASE);
        // The gain scales the window under load.
        let mut law = WindowLaw::new(BASE, MAX, 2.0);
        feed(&mut law, &mut now, ms(25), 1_000);
        assert!(law.window() > ms(49) && law.window() <= ms(50));
        let shared = ChunkWindow::fixed(BASE);
        shared.observe_ack(ms(100));
        assert_eq!(shared.window(), BASE);
    }
}
