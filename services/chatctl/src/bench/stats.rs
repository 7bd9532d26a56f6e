//! Latency samples and their percentiles. Samples are kept whole (a few
//! hundred thousand `u32` microseconds at most) and sorted once: exact
//! percentiles, no histogram error to explain next to a target.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the clock of a chunk's `published_at_us`.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Latencies in microseconds.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    micros: Vec<u32>,
    sorted: bool,
}

/// What a set of samples says, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Samples {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            micros: Vec::with_capacity(n),
            sorted: true,
        }
    }

    pub fn push_micros(&mut self, us: u64) {
        self.micros.push(u32::try_from(us).unwrap_or(u32::MAX));
        self.sorted = false;
    }

    pub fn push(&mut self, d: Duration) {
        self.push_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn extend(&mut self, other: Samples) {
        if self.micros.is_empty() {
            *self = other;
            return;
        }
        self.micros.extend_from_slice(&other.micros);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The `q`-quantile (0.0..=1.0) in microseconds, nearest-rank; `None`
    /// without samples.
    pub fn quantile_us(&mut self, q: f64) -> Option<u32> {
        if self.micros.is_empty() {
            return None;
        }
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
        let n = self.micros.len();
        // Nearest rank: the smallest value with at least q·n samples at or below it.
        let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
        let i = rank.clamp(1, n) - 1;
        self.micros.get(i).copied()
    }

    pub fn summary(&mut self) -> Option<Summary> {
        let ms = |us: u32| f64::from(us) / 1000.0;
        Some(Summary {
            count: self.len(),
            p50_ms: ms(self.quantile_us(0.50)?),
            p99_ms: ms(self.quantile_us(0.99)?),
            max_ms: ms(self.quantile_us(1.0)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut s = Samples::default();
        assert_eq!(s.summary(), None);
        for us in (1..=100).rev() {
            s.push_micros(us * 1000);
        }
        let sum = s.summary().unwrap();
        assert_eq!(sum.count, 100);
        assert_eq!(sum.p50_ms, 50.0);
        assert_eq!(sum.p99_ms, 99.0);
        assert_eq!(sum.max_ms, 100.0);
        assert_eq!(s.quantile_us(0.0), Some(1000));
    }

    #[test]
    fn merging_keeps_every_sample_and_resorts() {
        let mut a = Samples::default();
        a.push(Duration::from_millis(5));
        let mut b = Samples::default();
        b.push(Duration::from_millis(1));
        b.push_micros(u64::MAX);
        a.extend(b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.quantile_us(0.0), Some(1000));
        assert_eq!(a.quantile_us(1.0), Some(u32::MAX));
    }
}
