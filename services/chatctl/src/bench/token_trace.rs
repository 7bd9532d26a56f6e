//! Every measured token of a run, with when it arrived and in which chunk
//! of its answer (`--token-trace-dir`): when a run's latency tail came, and
//! where in the answers.

use std::fmt::Write as _;
use std::path::Path;

/// One token as the client received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracedToken {
    /// Wall clock, µs.
    pub received_us: u64,
    /// Model yields → client receives, µs.
    pub latency_us: u64,
    /// Its chunk's place in the answer (0: the first).
    pub chunk: u32,
}

/// A run's tokens, kept only when asked for (a disabled trace keeps none).
#[derive(Debug, Default)]
pub struct TokenTrace {
    enabled: bool,
    tokens: Vec<TracedToken>,
}

impl TokenTrace {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            tokens: Vec::new(),
        }
    }

    pub fn push(&mut self, token: TracedToken) {
        if self.enabled {
            self.tokens.push(token);
        }
    }

    pub fn extend(&mut self, other: TokenTrace) {
        self.enabled |= other.enabled;
        self.tokens.extend(other.tokens);
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Tab-separated, a header line first, in order of arrival.
    pub fn write_tsv(&self, path: &Path) -> std::io::Result<()> {
        let mut tokens = self.tokens.clone();
        tokens.sort_by_key(|t| t.received_us);
        let mut text = String::with_capacity(32 * tokens.len() + 40);
        text.push_str("received_us\tlatency_us\tchunk\n");
        for t in &tokens {
            let _ = writeln!(text, "{}\t{}\t{}", t.received_us, t.latency_us, t.chunk);
        }
        std::fs::write(path, text)
    }

    /// Where in their answers the tokens over the run's p99 came: the
    /// share of them carried by the answers' 2nd to 4th chunks, and those
    /// chunks' share of all the run's tokens. Streams in step start every
    /// turn together, and the burst of every stream's question, job and
    /// first chunk holds back the chunks right after the first: there the
    /// first share is several times the second. A steady load's tail comes
    /// from every chunk alike. `None` without enough tokens to tell.
    pub fn tail_in_early_chunks(&self) -> Option<EarlyChunks> {
        if self.tokens.len() < 1_000 {
            return None;
        }
        let mut latencies: Vec<u64> = self.tokens.iter().map(|t| t.latency_us).collect();
        latencies.sort_unstable();
        let p99 = latencies[latencies.len() * 99 / 100];
        let early = |t: &TracedToken| EARLY_CHUNKS.contains(&t.chunk);
        let (mut tail, mut tail_early, mut all_early) = (0usize, 0usize, 0usize);
        for t in &self.tokens {
            all_early += usize::from(early(t));
            if t.latency_us > p99 {
                tail += 1;
                tail_early += usize::from(early(t));
            }
        }
        if tail == 0 {
            return None;
        }
        Some(EarlyChunks {
            of_tail: tail_early as f64 / tail as f64,
            of_tokens: all_early as f64 / self.tokens.len() as f64,
        })
    }
}

/// The chunks right after an answer's first (0-based places).
const EARLY_CHUNKS: std::ops::RangeInclusive<u32> = 1..=3;

/// The answers' 2nd to 4th chunks: their share of a run's tail, and of all
/// its tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EarlyChunks {
    pub of_tail: f64,
    pub of_tokens: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 s of tokens, one every ms, each its own chunk in answers of 40.
    fn trace(latency_at: impl Fn(u64) -> u64) -> TokenTrace {
        let mut trace = TokenTrace::new(true);
        for i in 0..10_000u64 {
            trace.push(TracedToken {
                received_us: 1_000_000 + i * 1_000,
                latency_us: latency_at(i),
                chunk: u32::try_from(i % 40).unwrap(),
            });
        }
        trace
    }

    #[test]
    fn a_tail_held_back_after_each_answers_first_chunk_shows_and_a_spread_one_does_not() {
        // Answers of 40 chunks, their 2nd to 4th slow.
        let in_step = trace(|i| {
            if (1..=3).contains(&(i % 40)) {
                60_000 + i
            } else {
                20_000 + i % 7
            }
        });
        let early = in_step.tail_in_early_chunks().unwrap();
        assert!((early.of_tokens - 0.075).abs() < 0.001, "{early:?}");
        assert!(early.of_tail > 0.99, "{early:?}");
        // Every 47th token slow: at every place in the answers in turn.
        let spread = trace(|i| {
            if i % 47 == 0 {
                60_000 + i
            } else {
                20_000 + i % 7
            }
        });
        let early = spread.tail_in_early_chunks().unwrap();
        assert!(early.of_tail < 0.2, "{early:?}");
    }

    #[test]
    fn a_disabled_trace_keeps_nothing_and_tells_nothing() {
        let mut off = TokenTrace::new(false);
        off.push(TracedToken {
            received_us: 1,
            latency_us: 1,
            chunk: 0,
        });
        assert!(off.is_empty());
        assert_eq!(off.tail_in_early_chunks(), None);
    }

    #[test]
    fn the_tsv_lists_every_token_in_order_of_arrival() {
        let mut trace = TokenTrace::new(true);
        for (received_us, chunk) in [(30, 2), (10, 0), (20, 1)] {
            trace.push(TracedToken {
                received_us,
                latency_us: 5,
                chunk,
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.tsv");
        trace.write_tsv(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "received_us\tlatency_us\tchunk\n10\t5\t0\n20\t5\t1\n30\t5\t2\n"
        );
    }
}
