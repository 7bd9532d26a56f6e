//! Coalescing a model's tokens into chunks: a chunk per token would cost a
//! publish, a store and a frame per token, so what is buffered is flushed
//! when the window since its first token has passed, when it reaches the
//! size bound, and at the end. No
//! chunk is longer than the bound: a longer token is split across chunks
//! (at character boundaries), so one huge token cannot make an event over
//! NATS's message limit.
//!
//! A reasoning model's thinking is coalesced the same way, apart from its
//! answer ([`AnswerChunker`]): the two never share a chunk, and what one has
//! buffered goes out before the other's next piece, so the stored events
//! keep the model's order (its reasoning, then its answer).

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
    /// `window` zero = a chunk per token; `max_bytes` bounds every chunk
    /// (at least 4, so that any character fits).
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        Self {
            window,
            max_bytes: max_bytes.max(4),
            buffer: String::new(),
            due: None,
        }
    }

    /// Adds a token; returns the chunks due now, in order: the full ones
    /// (`max_bytes` each, or a character less), then the rest when its
    /// window is over. A rest left after full chunks starts a new window.
    pub fn push(&mut self, token: &str, now: Instant) -> Vec<String> {
        if token.is_empty() {
            return Vec::new();
        }
        self.buffer.push_str(token);
        let mut chunks = Vec::new();
        while self.buffer.len() >= self.max_bytes {
            let mut end = self.max_bytes;
            while !self.buffer.is_char_boundary(end) {
                end -= 1;
            }
            let rest = self.buffer.split_off(end);
            chunks.push(std::mem::replace(&mut self.buffer, rest));
            self.due = None;
        }
        let due = *self.due.get_or_insert(now + self.window);
        if self.window.is_zero() || now >= due {
            chunks.extend(self.flush());
        } else if self.buffer.is_empty() {
            self.due = None;
        }
        chunks
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

/// A piece of an answer ready to be published: a `chunk` or a `reasoning` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Answer(String),
    Reasoning(String),
}

/// Two [`Chunker`]s with the same window and bound, one for the answer and
/// one for the reasoning. At most one of them holds text at any time.
#[derive(Debug)]
pub struct AnswerChunker {
    answer: Chunker,
    reasoning: Chunker,
}

impl AnswerChunker {
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        Self {
            answer: Chunker::new(window, max_bytes),
            reasoning: Chunker::new(window, max_bytes),
        }
    }

    /// Adds a token of the answer; the buffered reasoning goes out first.
    pub fn push_answer(&mut self, token: &str, now: Instant) -> Vec<Piece> {
        let mut pieces: Vec<Piece> = self
            .reasoning
            .flush()
            .map(Piece::Reasoning)
            .into_iter()
            .collect();
        pieces.extend(self.answer.push(token, now).into_iter().map(Piece::Answer));
        pieces
    }

    /// Adds a token of reasoning; the buffered answer goes out first.
    pub fn push_reasoning(&mut self, token: &str, now: Instant) -> Vec<Piece> {
        let mut pieces: Vec<Piece> = self.answer.flush().map(Piece::Answer).into_iter().collect();
        pieces.extend(
            self.reasoning
                .push(token, now)
                .into_iter()
                .map(Piece::Reasoning),
        );
        pieces
    }

    /// When the buffered text is due (`None` when nothing is buffered).
    pub fn deadline(&self) -> Option<Instant> {
        self.answer.deadline().or(self.reasoning.deadline())
    }

    /// Takes whatever is buffered (at the window's end, or the answer's).
    pub fn flush(&mut self) -> Option<Piece> {
        self.reasoning
            .flush()
            .map(Piece::Reasoning)
            .or_else(|| self.answer.flush().map(Piece::Answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_and_answer_are_coalesced_apart_in_the_models_order() {
        let window = Duration::from_millis(20);
        let start = Instant::now();
        let mut c = AnswerChunker::new(window, 16);
        assert!(c.push_reasoning("Let me ", start).is_empty());
        assert!(c.push_reasoning("think. ", start).is_empty());
        assert_eq!(c.deadline(), Some(start + window));
        // The size bound splits reasoning as it splits an answer.
        assert_eq!(
            c.push_reasoning("Hmm, yes.", start),
            [Piece::Reasoning("Let me think. Hm".into())]
        );
        // The first answer token sends the buffered reasoning out first.
        assert_eq!(
            c.push_answer("Blue", start),
            [Piece::Reasoning("m, yes.".into())]
        );
        assert_eq!(c.deadline(), Some(start + window));
        assert_eq!(
            c.push_answer(" sky.", start + window),
            [Piece::Answer("Blue sky.".into())]
        );
        assert_eq!(c.deadline(), None);
        assert!(c.push_answer(" More", start + window).is_empty());
        assert_eq!(c.flush(), Some(Piece::Answer(" More".into())));
        assert_eq!(c.flush(), None);
        // Zero window: a piece per token, each of its own kind.
        let mut c = AnswerChunker::new(Duration::ZERO, 512);
        assert_eq!(c.push_reasoning("a", start), [Piece::Reasoning("a".into())]);
        assert_eq!(c.push_answer("b", start), [Piece::Answer("b".into())]);
    }

    #[test]
    fn zero_window_is_a_chunk_per_token() {
        let mut c = Chunker::new(Duration::ZERO, 512);
        let now = Instant::now();
        assert_eq!(c.push("Hello ", now), ["Hello "]);
        assert_eq!(c.push("world", now), ["world"]);
        assert!(c.push("", now).is_empty());
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
            assert!(c.push(t, start).is_empty());
        }
        assert_eq!(c.deadline(), Some(start + window));
        // The size bound flushes: 16 + 4 bytes >= 20.
        chunks.extend(c.push(tokens[3], start));
        assert_eq!(chunks[0], "The quick brown fox ");
        assert_eq!(c.deadline(), None);
        // A token arriving after the window of the buffered one flushes both.
        assert!(c.push(tokens[4], start).is_empty());
        chunks.extend(c.push(tokens[5], start + window));
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
    fn a_token_longer_than_the_bound_is_split_at_character_boundaries() {
        let start = Instant::now();
        let mut c = Chunker::new(Duration::from_secs(1), 8);
        assert!(c.push("abc", start).is_empty());
        // 17 bytes: the first "ö" (2 bytes) would cross the bound at 8, so
        // the first chunk is a byte short; then four "ö" fill the second.
        let chunks = c.push("defgööööö", start);
        assert_eq!(chunks, ["abcdefg", "öööö"]);
        assert_eq!(c.deadline(), Some(start + Duration::from_secs(1)));
        assert_eq!(c.flush().as_deref(), Some("ö"));

        // A token many times the bound, with a zero window: all of it now.
        let mut c = Chunker::new(Duration::ZERO, 8);
        let long = "0123456789".repeat(5);
        let chunks = c.push(&long, start);
        assert!(chunks.iter().all(|c| c.len() <= 8), "{chunks:?}");
        assert_eq!(chunks.concat(), long);
        assert_eq!(c.flush(), None);

        // A window still open keeps the rest buffered for it.
        let mut c = Chunker::new(Duration::from_secs(1), 8);
        assert_eq!(c.push("0123456789", start), ["01234567"]);
        assert_eq!(c.flush().as_deref(), Some("89"));
    }
}
