//! What a peer client received, checked as it arrives: the server-sent
//! events of one answer parsed out of the byte stream, and every token
//! required exactly once, in order, with the demo model's text, across a
//! dropped connection and its resume.

use serde::Deserialize;

/// One event of the peer's stream (see `bench/peers/resumable-stream/server.mjs`).
#[derive(Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PeerEvent {
    /// Token `i`, produced at `t` (µs since the epoch).
    Token { i: usize, t: u64, x: String },
    /// The answer is complete with this many tokens.
    Done { done: usize },
}

/// Splits a byte stream into server-sent events and counts what was
/// consumed in the library's unit: `skipCharacters` slices a JavaScript
/// string, so a resume skips UTF-16 code units of complete events.
#[derive(Debug, Default)]
pub struct EventReader {
    pending: Vec<u8>,
    consumed_utf16: usize,
}

impl EventReader {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next complete event, counted as consumed; `None` until more
    /// bytes complete one.
    pub fn next_event(&mut self) -> Result<Option<PeerEvent>, String> {
        let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") else {
            return Ok(None);
        };
        let raw: Vec<u8> = self.pending.drain(..end + 2).collect();
        let text = std::str::from_utf8(&raw).map_err(|e| format!("event not UTF-8: {e}"))?;
        self.consumed_utf16 += text.encode_utf16().count();
        let data = text
            .trim_end()
            .strip_prefix("data: ")
            .ok_or_else(|| format!("not a data event: {text:?}"))?;
        serde_json::from_str(data)
            .map(Some)
            .map_err(|e| format!("event {data:?}: {e}"))
    }

    /// Characters (UTF-16 units) of the complete events read so far: the
    /// `skip` of a resume.
    pub fn consumed(&self) -> usize {
        self.consumed_utf16
    }

    /// Forgets every byte not consumed as an event yet (the connection
    /// they came on was dropped; the resume sends them again).
    pub fn drop_partial(&mut self) {
        self.pending.clear();
    }
}

/// One answer's tokens against the demo model's.
#[derive(Debug)]
pub struct AnswerCheck<'a> {
    expected: &'a [String],
    next: usize,
    done: bool,
}

impl<'a> AnswerCheck<'a> {
    pub fn new(expected: &'a [String]) -> Self {
        Self {
            expected,
            next: 0,
            done: false,
        }
    }

    /// Checks token `i` with text `x`: it must be the next one.
    pub fn token(&mut self, i: usize, x: &str) -> Result<(), String> {
        if self.done {
            return Err(format!("token {i} after done"));
        }
        if i < self.next {
            return Err(format!("token {i} twice"));
        }
        if i > self.next {
            return Err(format!("tokens {}..{i} missing", self.next));
        }
        match self.expected.get(i) {
            Some(want) if want == x => {}
            Some(want) => return Err(format!("token {i} is {x:?}, the model said {want:?}")),
            None => return Err(format!("token {i} beyond the {} sent", self.expected.len())),
        }
        self.next += 1;
        Ok(())
    }

    /// The end: every token must have come.
    pub fn done(&mut self, count: usize) -> Result<(), String> {
        if self.done {
            return Err("done twice".into());
        }
        if count != self.expected.len() || self.next != self.expected.len() {
            return Err(format!(
                "done after {} of {} tokens (done says {count})",
                self.next,
                self.expected.len()
            ));
        }
        self.done = true;
        Ok(())
    }

    pub fn received(&self) -> usize {
        self.next
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize, x: &str) -> String {
        format!(
            "data: {{\"i\":{i},\"t\":5,\"x\":{}}}\n\n",
            serde_json::json!(x)
        )
    }

    #[test]
    fn events_split_across_reads_parse_once_and_count_utf16() {
        let stream = format!(
            "{}{}data: {{\"done\":2}}\n\n",
            event(0, "héllo "),
            event(1, "😀.")
        );
        let bytes = stream.as_bytes();
        let mut reader = EventReader::default();
        let mut events = Vec::new();
        for piece in bytes.chunks(7) {
            reader.push(piece);
            while let Some(e) = reader.next_event().unwrap() {
                events.push(e);
            }
        }
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0],
            PeerEvent::Token {
                i: 0,
                t: 5,
                x: "héllo ".into()
            }
        );
        assert_eq!(events[2], PeerEvent::Done { done: 2 });
        assert_eq!(reader.consumed(), stream.encode_utf16().count());
        assert!(reader.consumed() < stream.len(), "UTF-16 units, not bytes");
    }

    #[test]
    fn unread_events_are_forgotten_and_not_counted() {
        let mut reader = EventReader::default();
        let (first, second, third) = (event(0, "a "), event(1, "b "), event(2, "c."));
        reader.push(format!("{first}{second}{}", &third[..9]).as_bytes());
        assert!(matches!(
            reader.next_event(),
            Ok(Some(PeerEvent::Token { i: 0, .. }))
        ));
        assert_eq!(reader.consumed(), first.len());
        reader.drop_partial();
        assert_eq!(reader.next_event(), Ok(None));
        assert_eq!(reader.consumed(), first.len());
        reader.push(format!("{second}{third}").as_bytes());
        assert!(matches!(
            reader.next_event(),
            Ok(Some(PeerEvent::Token { i: 1, .. }))
        ));
        assert!(matches!(
            reader.next_event(),
            Ok(Some(PeerEvent::Token { i: 2, .. }))
        ));
    }

    #[test]
    fn every_token_exactly_once_in_order() {
        let expected: Vec<String> = ["a ", "b ", "c."].map(String::from).to_vec();
        let mut check = AnswerCheck::new(&expected);
        check.token(0, "a ").unwrap();
        assert_eq!(check.token(0, "a ").unwrap_err(), "token 0 twice");
        assert_eq!(check.token(2, "c.").unwrap_err(), "tokens 1..2 missing");
        assert!(check.token(1, "x ").unwrap_err().contains("the model said"));
        check.token(1, "b ").unwrap();
        assert!(check.done(3).unwrap_err().contains("done after 2 of 3"));
        check.token(2, "c.").unwrap();
        check.done(3).unwrap();
        assert!(check.is_done());
        assert_eq!(check.token(3, "d").unwrap_err(), "token 3 after done");
    }
}
