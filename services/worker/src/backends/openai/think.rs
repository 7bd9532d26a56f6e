//! Reasoning written inline: a server without a reasoning parser streams a
//! reasoning model's thinking as `<think>…</think>` at the start of
//! `content`. [`ThinkSplitter`] takes the content deltas as they come (the
//! tags may be split across them) and sorts the text into reasoning and
//! answer.

/// A piece of content, sorted.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Piece {
    Reasoning(String),
    Answer(String),
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";
/// Whitespace held while waiting to see whether `<think>` follows; more
/// than this and the content is taken as the answer.
const UNDECIDED_LIMIT: usize = 256;

#[derive(Debug, Default)]
pub(super) struct ThinkSplitter {
    state: State,
    /// Text not sorted yet: the start of the content while it may still
    /// become `<think>`, or the end of the reasoning while it may still
    /// become `</think>`.
    held: String,
    /// Drops the whitespace that follows a tag (`<think>\n`, `</think>\n\n`).
    trim_start: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace, or a beginning of `<think>`, so far.
    #[default]
    Undecided,
    Thinking,
    Answer,
}

impl ThinkSplitter {
    /// Sorts the next content delta; at most two pieces come out (the end
    /// of the reasoning, the start of the answer).
    pub(super) fn push(&mut self, text: &str) -> Vec<Piece> {
        let mut pieces = Vec::new();
        self.sort(text, &mut pieces);
        pieces
    }

    /// Whatever is still held, at the end of the content.
    pub(super) fn finish(&mut self) -> Option<Piece> {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return None;
        }
        Some(match self.state {
            State::Thinking => Piece::Reasoning(held),
            State::Undecided | State::Answer => Piece::Answer(held),
        })
    }

    fn sort(&mut self, text: &str, pieces: &mut Vec<Piece>) {
        let text = if self.trim_start {
            let trimmed = text.trim_start();
            self.trim_start = trimmed.is_empty();
            trimmed
        } else {
            text
        };
        if text.is_empty() {
            return;
        }
        match self.state {
            State::Answer => pieces.push(Piece::Answer(text.to_string())),
            State::Undecided => {
                self.held.push_str(text);
                let start = self.held.trim_start();
                if let Some(rest) = start.strip_prefix(OPEN) {
                    let rest = rest.to_string();
                    self.held.clear();
                    self.state = State::Thinking;
                    self.trim_start = true;
                    self.sort(&rest, pieces);
                } else if !OPEN.starts_with(start) || self.held.len() > UNDECIDED_LIMIT {
                    self.state = State::Answer;
                    pieces.push(Piece::Answer(std::mem::take(&mut self.held)));
                }
            }
            State::Thinking => {
                self.held.push_str(text);
                if let Some(at) = self.held.find(CLOSE) {
                    let rest = self.held[at + CLOSE.len()..].to_string();
                    self.held.truncate(at);
                    if !self.held.is_empty() {
                        pieces.push(Piece::Reasoning(std::mem::take(&mut self.held)));
                    }
                    self.state = State::Answer;
                    self.trim_start = true;
                    self.sort(&rest, pieces);
                } else {
                    // Keep back an end that may be the start of `</think>`
                    // (it begins at `<`, a character boundary).
                    let keep = (1..CLOSE.len())
                        .rev()
                        .find(|&n| self.held.ends_with(&CLOSE[..n]))
                        .unwrap_or(0);
                    let sorted = self.held.len() - keep;
                    if sorted > 0 {
                        let rest = self.held.split_off(sorted);
                        pieces.push(Piece::Reasoning(std::mem::replace(&mut self.held, rest)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasoning and the answer of content sent in `deltas`.
    fn split(deltas: &[&str]) -> (String, String) {
        let mut splitter = ThinkSplitter::default();
        let (mut reasoning, mut answer) = (String::new(), String::new());
        let mut pieces: Vec<Piece> = deltas.iter().flat_map(|d| splitter.push(d)).collect();
        pieces.extend(splitter.finish());
        for piece in pieces {
            match piece {
                Piece::Reasoning(text) => reasoning.push_str(&text),
                Piece::Answer(text) => answer.push_str(&text),
            }
        }
        (reasoning, answer)
    }

    #[test]
    fn sorts_inline_reasoning_however_the_deltas_are_cut() {
        let whole = "<think>\nThe user greets me.\n</think>\n\nHello!";
        let expected = ("The user greets me.\n".to_string(), "Hello!".to_string());
        assert_eq!(split(&[whole]), expected, "one delta");
        // Every way to cut it in two, and one character at a time.
        for at in 1..whole.len() {
            assert_eq!(
                split(&[&whole[..at], &whole[at..]]),
                expected,
                "cut at {at}"
            );
        }
        let chars: Vec<String> = whole.chars().map(String::from).collect();
        let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split(&chars), expected, "a character at a time");
    }

    #[test]
    fn content_without_a_leading_think_tag_is_the_answer() {
        let cases: &[(&[&str], (&str, &str))] = &[
            (&["Hello ", "world"], ("", "Hello world")),
            (&["<b>bold</b>"], ("", "<b>bold</b>")),
            (&["<thin", "king>"], ("", "<thinking>")),
            (&["Say <think>", " no"], ("", "Say <think> no")),
            (&["\n\n", "Hi"], ("", "\n\nHi")),
            (&["<th"], ("", "<th")),
            (
                &["<think>still thinking </thi"],
                ("still thinking </thi", ""),
            ),
            (&["<think></think>", "Answer"], ("", "Answer")),
            (&["<think>a</think>b</think>"], ("a", "b</think>")),
            (&["<think>wörld ünïcode</think>ok"], ("wörld ünïcode", "ok")),
        ];
        for (deltas, (reasoning, answer)) in cases {
            assert_eq!(
                split(deltas),
                (reasoning.to_string(), answer.to_string()),
                "{deltas:?}"
            );
        }
    }

    #[test]
    fn reasoning_streams_as_it_comes() {
        let mut splitter = ThinkSplitter::default();
        assert_eq!(splitter.push("<think>"), []);
        assert_eq!(splitter.push("Let me"), [Piece::Reasoning("Let me".into())]);
        assert_eq!(splitter.push(" see</"), [Piece::Reasoning(" see".into())]);
        assert_eq!(splitter.push("think>Yes."), [Piece::Answer("Yes.".into())]);
    }
}
