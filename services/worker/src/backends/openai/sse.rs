//! Server-sent events, read with a bound on what is buffered.
//!
//! `eventsource-stream` (used before) keeps a line in memory however long
//! it grows and parses the partial line again on every read, so one endless
//! line from a broken or hostile server grows the worker without limit. Here
//! the body is split into lines by tokio-util's [`LinesCodec`], which
//! remembers how far it searched and refuses a line longer than its bound
//! before holding more than the bound (plus one read); an event made of
//! several `data:` lines is bounded the same way.
//!
//! Only what an OpenAI-compatible stream needs of the SSE format is kept:
//! `data:` fields (with or without the space after the colon), comments
//! (`: keep-alive`), blank lines ending an event, `\n` or `\r\n` line ends,
//! and a byte-order mark. `event:`, `id:` and `retry:` are ignored.

use std::io;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

use super::error_chain;

/// Why the events could not be read.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum SseError {
    /// A line, or an event's data, is longer than the bound: the server's
    /// fault, and nothing more of it was kept.
    #[error("the model server sent an event over {limit} bytes")]
    TooLarge { limit: usize },
    /// The connection failed while the stream was read.
    #[error("reading the stream: {0}")]
    Transport(String),
    /// The bytes are not an event stream (not UTF-8).
    #[error("malformed event stream: {0}")]
    Malformed(String),
}

/// The `data` of each event of a response body, at most `max_bytes` each.
pub(super) struct EventReader {
    lines: BoxStream<'static, Result<String, LinesCodecError>>,
    /// The data lines of the event being read, each followed by `\n`.
    data: String,
    max_bytes: usize,
    first_line: bool,
}

impl EventReader {
    pub(super) fn new<S>(body: S, max_bytes: usize) -> Self
    where
        S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
    {
        let bytes = StreamReader::new(body.map_err(io::Error::other).boxed());
        let lines = FramedRead::new(bytes, LinesCodec::new_with_max_length(max_bytes)).boxed();
        Self {
            lines,
            data: String::new(),
            max_bytes,
            first_line: true,
        }
    }

    /// The data of the next event, `None` at the end of the body. An event
    /// the body ends in without its blank line is still returned: some
    /// servers close right after `data: [DONE]`.
    ///
    /// Cancel-safe: what was read of an event stays in `self`.
    pub(super) async fn next(&mut self) -> Option<Result<String, SseError>> {
        loop {
            let line = match self.lines.next().await {
                Some(Ok(line)) => line,
                Some(Err(e)) => return Some(Err(self.error(e))),
                None => return self.dispatch().map(Ok),
            };
            let line = if std::mem::take(&mut self.first_line) {
                line.strip_prefix('\u{feff}').unwrap_or(&line)
            } else {
                &line
            };
            if line.is_empty() {
                match self.dispatch() {
                    Some(data) => return Some(Ok(data)),
                    None => continue,
                }
            }
            if line.starts_with(':') {
                continue; // a comment: a keep-alive
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            if field != "data" {
                continue;
            }
            if self.data.len() + value.len() + 1 > self.max_bytes {
                self.data = String::new();
                return Some(Err(SseError::TooLarge {
                    limit: self.max_bytes,
                }));
            }
            self.data.push_str(value);
            self.data.push('\n');
        }
    }

    /// Ends the event being read: its data without the last `\n`, or `None`
    /// when it had no data line.
    fn dispatch(&mut self) -> Option<String> {
        let mut data = std::mem::take(&mut self.data);
        data.pop()?;
        Some(data)
    }

    fn error(&self, e: LinesCodecError) -> SseError {
        match e {
            LinesCodecError::MaxLineLengthExceeded => SseError::TooLarge {
                limit: self.max_bytes,
            },
            LinesCodecError::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
                SseError::Malformed(e.to_string())
            }
            LinesCodecError::Io(e) => SseError::Transport(error_chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events read from a body sent in `parts`.
    async fn events(parts: &[&str], max_bytes: usize) -> Vec<Result<String, SseError>> {
        let parts: Vec<Result<Bytes, reqwest::Error>> = parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p.as_bytes())))
            .collect();
        let mut reader = EventReader::new(futures::stream::iter(parts), max_bytes);
        let mut events = Vec::new();
        while let Some(event) = reader.next().await {
            let failed = event.is_err();
            events.push(event);
            if failed {
                break;
            }
        }
        events
    }

    fn ok(data: &[&str]) -> Vec<Result<String, SseError>> {
        data.iter().map(|d| Ok(d.to_string())).collect()
    }

    #[tokio::test]
    async fn reads_the_shapes_servers_send() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("plain", &["data: a\n\ndata: b\n\n"], &["a", "b"]),
            ("no space after the colon", &["data:a\n\n"], &["a"]),
            ("CRLF", &["data: a\r\n\r\ndata: b\r\n\r\n"], &["a", "b"]),
            (
                "comments and other fields",
                &[": keep-alive\n\nevent: x\nid: 1\nretry: 5\ndata: a\n\n"],
                &["a"],
            ),
            (
                "split anywhere",
                &["da", "ta: h", "ello\r", "\n", "\r\n"],
                &["hello"],
            ),
            ("several data lines", &["data: a\ndata: b\n\n"], &["a\nb"]),
            (
                "no blank line at the end",
                &["data: a\n\ndata: [DONE]"],
                &["a", "[DONE]"],
            ),
            ("a byte-order mark", &["\u{feff}data: a\n\n"], &["a"]),
            (
                "multi-byte characters split",
                &["data: w\u{f6}", "rld\n\n"],
                &["w\u{f6}rld"],
            ),
        ];
        for (name, parts, expected) in cases {
            assert_eq!(events(parts, 1024).await, ok(expected), "{name}");
        }
    }

    #[tokio::test]
    async fn a_line_or_an_event_over_the_bound_is_refused() {
        let too_large = Err(SseError::TooLarge { limit: 16 });
        let long_line = format!("data: {}\n\n", "x".repeat(40));
        assert_eq!(events(&[&long_line], 16).await, vec![too_large.clone()]);
        // Without a line end the line is refused as soon as it is too long.
        let endless = "x".repeat(10);
        let parts = vec!["data: ", &endless, &endless, &endless];
        assert_eq!(events(&parts, 16).await, vec![too_large.clone()]);
        // Short lines that add up to a long event.
        let many = "data: 12345\n".repeat(4) + "\n";
        assert_eq!(events(&[&many], 16).await, vec![too_large]);
        // Exactly at the bound is fine: "data: " + 10 bytes = 16.
        let fits = format!("data: {}\n\n", "y".repeat(10));
        assert_eq!(events(&[&fits], 16).await, ok(&["yyyyyyyyyy"]));
    }

    #[tokio::test]
    async fn bytes_that_are_not_utf8_are_malformed() {
        let parts: Vec<Result<Bytes, reqwest::Error>> =
            vec![Ok(Bytes::from_static(b"data: \xff\xfe\n\n"))];
        let mut reader = EventReader::new(futures::stream::iter(parts), 1024);
        assert!(matches!(
            reader.next().await,
            Some(Err(SseError::Malformed(_)))
        ));
    }
}
