//! Coalescing a model's tokens into chunks: a chunk per token would cost a
//! publish, a store and a frame per token, so what is buffered is flushed
//! when the window since its first token has passed, when it reaches the
//! size bound, and at the end. The window is given with each token (it
//! adapts to the path's backlog, see [`crate::chunk_window`]); the first
//! token of an answer is never held by it: it goes out at once, since the
//! time to the first token is what a user waits for. No
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
    max_bytes: usize,
    buffer: String,
    /// When the buffered text must go out: its first token's arrival plus the window.
    due: Option<Instant>,
    /// Nothing has gone out yet: the next token is the first.
    first: bool,
}

impl Chunker {
    /// `max_bytes` bounds every chunk (at least 4, so that any character fits).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes: max_bytes.max(4),
            buffer: String::new(),
            due: None,
            first: true,
        }
    }

    /// Adds a token; returns the chunks due now, in order: the full ones
    /// (`max_bytes` each, or a character less), then the rest when its
    /// window is over. A rest left after full chunks starts a new window
    /// of `window` (zero = a chunk per token). The first token goes out at once.
    pub fn push(&mut self, token: &str, now: Instant, window: Duration) -> Vec<String> {
        if token.is_empty() {
            return Vec::new();
        }
        let window = if std::mem::take(&mut self.first) {
            Duration::ZERO
        } else {
            window
        };
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
        let due = *self.due.get_or_insert(now + window);
        if window.is_zero() || now >= due {
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
    pub fn new(max_bytes: usize) -> Self {
        Self {
            answer: Chunker::new(max_bytes),
            reasoning: Chunker::new(max_bytes),
        }
    }

    /// Adds a token of the answer; the buffered reasoning goes out first.
    pub fn push_answer(&mut self, token: &str, now: Instant, window: Duration) -> Vec<Piece> {
        let mut pieces: Vec<Piece> = self
            .reasoning
            .flush()
            .map(Piece::Reasoning)
            .into_iter()
            .collect();
        pieces.extend(
            self.answer
                .push(token, now, window)
                .into_iter()
                .map(Piece::Answer),
        );
        pieces
    }

    /// Adds a token of reasoning; the buffered answer goes out first.
    pub fn push_reasoning(&mut self, token: &str, now: Instant, window: Duration) -> Vec<Piece> {
        let mut pieces: Vec<Piece> = self.answer.flush().map(Piece::Answer).into_iter().collect();
        pieces.extend(
            self.reasoning
                .push(token, now, window)
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

    const WINDOW: Duration = Duration::from_millis(20);

    /// A chunker whose first token has gone out already.
    fn started(max_bytes: usize, now: Instant) -> Chunker {
        let mut c = Chunker::new(max_bytes);
        assert_eq!(c.push("first ", now, WINDOW), ["first "]);
        c
    }

    #[test]
    fn the_first_token_goes_out_at_once_and_the_next_wait_for_their_window() {
        let start = Instant::now();
        let mut c = Chunker::new(512);
        assert_eq!(c.push("Hello ", start, WINDOW), ["Hello "]);
        assert_eq!(c.deadline(), None);
        assert!(c.push("big ", start, WINDOW).is_empty());
        assert_eq!(c.deadline(), Some(start + WINDOW));
        assert!(c.push("world", start + WINDOW / 2, WINDOW).is_empty());
        assert_eq!(c.flush().as_deref(), Some("big world"));
        // Empty tokens do not count as the first.
        let mut c = Chunker::new(512);
        assert!(c.push("", start, WINDOW).is_empty());
        assert_eq!(c.push("a", start, WINDOW), ["a"]);
    }

    #[test]
    fn each_chunk_takes_the_window_given_when_it_starts() {
        let start = Instant::now();
        let mut c = started(512, start);
        let long = Duration::from_millis(200);
        assert!(c.push("a ", start, long).is_empty());
        assert_eq!(c.deadline(), Some(start + long));
        // A shorter window given later does not cut the open chunk short.
        assert!(c.push("b ", start + WINDOW, WINDOW).is_empty());
        assert_eq!(c.deadline(), Some(start + long));
        assert_eq!(c.push("c ", start + long, WINDOW), ["a b c "]);
        // The next chunk starts with the window given then.
        assert!(c.push("d ", start + long, WINDOW).is_empty());
        assert_eq!(c.deadline(), Some(start + long + WINDOW));
    }

    #[test]
    fn reasoning_and_answer_are_coalesced_apart_in_the_models_order() {
        let start = Instant::now();
        let mut c = AnswerChunker::new(16);
        // The first piece of each kind goes out at once.
        assert_eq!(
            c.push_reasoning("Well. ", start, WINDOW),
            [Piece::Reasoning("Well. ".into())]
        );
        assert!(c.push_reasoning("Let me ", start, WINDOW).is_empty());
        assert!(c.push_reasoning("think. ", start, WINDOW).is_empty());
        assert_eq!(c.deadline(), Some(start + WINDOW));
        // The size bound splits reasoning as it splits an answer.
        assert_eq!(
            c.push_reasoning("Hmm, yes.", start, WINDOW),
            [Piece::Reasoning("Let me think. Hm".into())]
        );
        // The first answer token sends the buffered reasoning out first,
        // then itself at once.
        assert_eq!(
            c.push_answer("Blue", start, WINDOW),
            [
                Piece::Reasoning("m, yes.".into()),
                Piece::Answer("Blue".into())
            ]
        );
        assert_eq!(c.deadline(), None);
        assert!(c.push_answer(" sky", start, WINDOW).is_empty());
        assert_eq!(c.deadline(), Some(start + WINDOW));
        assert_eq!(
            c.push_answer(".", start + WINDOW, WINDOW),
            [Piece::Answer(" sky.".into())]
        );
        assert_eq!(c.deadline(), None);
        assert!(c.push_answer(" More", start + WINDOW, WINDOW).is_empty());
        assert_eq!(c.flush(), Some(Piece::Answer(" More".into())));
        assert_eq!(c.flush(), None);
        // Zero window: a piece per token, each of its own kind.
        let mut c = AnswerChunker::new(512);
        for _ in 0..2 {
            assert_eq!(
                c.push_reasoning("a", start, Duration::ZERO),
                [Piece::Reasoning("a".into())]
            );
            assert_eq!(
                c.push_answer("b", start, Duration::ZERO),
                [Piece::Answer("b".into())]
            );
        }
    }

    #[test]
    fn zero_window_is_a_chunk_per_token() {
        let now = Instant::now();
        let mut c = started(512, now);
        assert_eq!(c.push("Hello ", now, Duration::ZERO), ["Hello "]);
        assert_eq!(c.push("world", now, Duration::ZERO), ["world"]);
        assert!(c.push("", now, Duration::ZERO).is_empty());
        assert_eq!(c.flush(), None);
    }

    #[test]
    fn window_and_size_flush_and_nothing_is_lost() {
        let start = Instant::now();
        let mut c = started(20, start);
        let mut chunks = vec!["first ".to_string()];
        let tokens = [
            "The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog.",
        ];
        // Three tokens inside one window stay buffered (16 bytes < 20).
        for t in &tokens[..3] {
            assert!(c.push(t, start, WINDOW).is_empty());
        }
        assert_eq!(c.deadline(), Some(start + WINDOW));
        // The size bound flushes: 16 + 4 bytes >= 20.
        chunks.extend(c.push(tokens[3], start, WINDOW));
        assert_eq!(chunks[1], "The quick brown fox ");
        assert_eq!(c.deadline(), None);
        // A token arriving after the window of the buffered one flushes both.
        assert!(c.push(tokens[4], start, WINDOW).is_empty());
        chunks.extend(c.push(tokens[5], start + WINDOW, WINDOW));
        assert_eq!(chunks[2], "jumps over ");
        // The timer flush, then the end flush.
        c.push(tokens[6], start, WINDOW);
        chunks.push(c.flush().unwrap());
        c.push(tokens[7], start, WINDOW);
        c.push(tokens[8], start, WINDOW);
        chunks.push(c.flush().unwrap());
        assert_eq!(c.flush(), None);
        assert_eq!(chunks.concat(), format!("first {}", tokens.concat()));
        assert!(chunks.iter().all(|c| !c.is_empty()));
    }

    #[test]
    fn a_token_longer_than_the_bound_is_split_at_character_boundaries() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut c = started(8, start);
        assert!(c.push("abc", start, second).is_empty());
        // 17 bytes: the first "ö" (2 bytes) would cross the bound at 8, so
        // the first chunk is a byte short; then four "ö" fill the second.
        let chunks = c.push("defgööööö", start, second);
        assert_eq!(chunks, ["abcdefg", "öööö"]);
        assert_eq!(c.deadline(), Some(start + second));
        assert_eq!(c.flush().as_deref(), Some("ö"));

        // A token many times the bound, with a zero window: all of it now.
        let mut c = started(8, start);
        let long = "0123456789".repeat(5);
        let chunks = c.push(&long, start, Duration::ZERO);
        assert!(chunks.iter().all(|c| c.len() <= 8), "{chunks:?}");
        assert_eq!(chunks.concat(), long);
        assert_eq!(c.flush(), None);

        // A window still open keeps the rest buffered for it.
        let mut c = started(8, start);
        assert_eq!(c.push("0123456789", start, second), ["01234567"]);
        assert_eq!(c.flush().as_deref(), Some("89"));

        // Even the first token is split at the bound.
        let mut c = Chunker::new(8);
        assert_eq!(c.push("0123456789", start, second), ["01234567", "89"]);
    }
}
