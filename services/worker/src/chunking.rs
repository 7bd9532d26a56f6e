//! Coalescing a model's tokens into chunks (DESIGN.md, "Chunks are not
//! tokens"): what is buffered is flushed when the window since its first
//! token has passed, when it reaches the size bound, and at the end.

use std::time::Duration;

use tokio::time::Instant;

/// Buffers tokens until a chunk is due. Pure: the caller owns the clock and
/// the timer, so this is tested without sleeping.
#[derive(Debug)]
pub struct Chunker {
    window: Duration,
    max_bytes: usize,
    buffer: String,
    /// When the buffered text must go out: its first token's arrival plus the window.
    due: Option<Instant>,
}

impl Chunker {
    /// `window` zero = a chunk per token; `max_bytes` is a soft bound (a
    /// single token longer than it is one chunk of its own, never split).
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        Self {
            window,
            max_bytes: max_bytes.max(1),
            buffer: String::new(),
            due: None,
        }
    }

    /// Adds a token; returns a chunk when one is due now.
    pub fn push(&mut self, token: &str, now: Instant) -> Option<String> {
        if token.is_empty() {
            return None;
        }
        self.buffer.push_str(token);
        let due = *self.due.get_or_insert(now + self.window);
        if self.window.is_zero() || self.buffer.len() >= self.max_bytes || now >= due {
            self.flush()
        } else {
            None
        }
    }

    /// When the buffered text is due (`None` when nothing is buffered).
    pub fn deadline(&self) -> Option<Instant> {
        self.due
    }

    /// Takes whatever is buffered (at the window's end, or the answer's).
    pub fn flush(&mut self) -> Option<String> {
        self.due = None;
        if self.buffer.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.buffer))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_window_is_a_chunk_per_token() {
        let mut c = Chunker::new(Duration::ZERO, 512);
        let now = Instant::now();
        assert_eq!(c.push("Hello ", now).as_deref(), Some("Hello "));
        assert_eq!(c.push("world", now).as_deref(), Some("world"));
        assert_eq!(c.push("", now), None);
        assert_eq!(c.flush(), None);
    }

    #[test]
    fn window_and_size_flush_and_nothing_is_lost() {
        let window = Duration::from_millis(20);
        let mut c = Chunker::new(window, 20);
        let start = Instant::now();
        let mut chunks = Vec::new();
        let tokens = [
            "The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog.",
        ];
        // Three tokens inside one window stay buffered (16 bytes < 20).
        for t in &tokens[..3] {
            assert_eq!(c.push(t, start), None);
        }
        assert_eq!(c.deadline(), Some(start + window));
        // The size bound flushes: 16 + 4 bytes >= 20.
        chunks.push(c.push(tokens[3], start).unwrap());
        assert_eq!(chunks[0], "The quick brown fox ");
        assert_eq!(c.deadline(), None);
        // A token arriving after the window of the buffered one flushes both.
        assert_eq!(c.push(tokens[4], start), None);
        chunks.push(c.push(tokens[5], start + window).unwrap());
        assert_eq!(chunks[1], "jumps over ");
        // The timer flush, then the end flush.
        c.push(tokens[6], start);
        chunks.push(c.flush().unwrap());
        c.push(tokens[7], start);
        c.push(tokens[8], start);
        chunks.push(c.flush().unwrap());
        assert_eq!(c.flush(), None);
        assert_eq!(chunks.concat(), tokens.concat());
        assert!(chunks.iter().all(|c| !c.is_empty()));
    }

    #[test]
    fn an_oversize_token_is_one_chunk() {
        let mut c = Chunker::new(Duration::from_secs(1), 4);
        let long = "extraordinarily ";
        assert_eq!(c.push(long, Instant::now()).as_deref(), Some(long));
    }
}
