//! A socket's event frame, read for the UI message stream: only the fields
//! the stream needs. Nearly every frame of an answer is a `chunk` (or a
//! `reasoning`) as the worker's serialiser lays it out, so those are read
//! by their layout, field by field in the order they are written, and a
//! frame laid out any other way (a terminal event, an escaped text, a
//! field this gateway does not expect) goes through serde. Both readings
//! give the same [`EventFrame`] for every frame the first accepts (see the
//! tests).
//!
//! The text stays the JSON string it was stored as: a delta carries it on
//! as it is, never unescaped and escaped again.

use std::borrow::Cow;

use protocol::{ErrorCode, FinishReason, MessageId, Usage};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// A stored event as a socket gets it.
#[derive(Debug, PartialEq)]
pub(crate) struct EventFrame<'a> {
    pub(crate) kind: Cow<'a, str>,
    pub(crate) message_id: Option<MessageId>,
    pub(crate) attempt: Option<u32>,
    /// The stored text, when it is a JSON string.
    pub(crate) text: Option<JsonString<'a>>,
    pub(crate) finish_reason: Option<FinishReason>,
    pub(crate) usage: Option<Usage>,
    pub(crate) code: Option<ErrorCode>,
    pub(crate) seq: u64,
}

/// A JSON string literal, quotes included, exactly as it was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JsonString<'a>(&'a str);

impl<'a> JsonString<'a> {
    /// The literal, quotes and escapes included.
    pub(crate) fn literal(self) -> &'a str {
        self.0
    }
}

/// Serialised as the text it stands for (serde_json escapes it as the
/// worker's serialiser did, so the bytes come out the same).
impl Serialize for JsonString<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text: Cow<'_, str> = serde_json::from_str(self.0).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

/// The serde reading: any field order, any escaping, unknown fields
/// skipped unread.
#[derive(Deserialize)]
struct AnyLayout<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    message_id: Option<MessageId>,
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default)]
    finish_reason: Option<FinishReason>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    code: Option<ErrorCode>,
    seq: u64,
}

impl<'a> EventFrame<'a> {
    pub(crate) fn parse(frame: &'a str) -> Option<Self> {
        Self::parse_delta(frame).or_else(|| Self::parse_any(frame))
    }

    fn parse_any(frame: &'a str) -> Option<Self> {
        let any: AnyLayout<'a> = serde_json::from_str(frame).ok()?;
        Some(Self {
            kind: any.kind,
            message_id: any.message_id,
            attempt: any.attempt,
            text: any
                .text
                .map(RawValue::get)
                .filter(|raw| raw.starts_with('"'))
                .map(JsonString),
            finish_reason: any.finish_reason,
            usage: any.usage,
            code: any.code,
            seq: any.seq,
        })
    }

    /// A `chunk` or `reasoning` frame in the worker's layout:
    /// `{"type":K,"message_id":"<uuid>","attempt":N,"index":N,"text":"…"`
    /// then an optional `,"published_at_us":N` and `,"seq":N}`, the text
    /// without escapes or control characters. Anything else is `None`.
    fn parse_delta(frame: &'a str) -> Option<Self> {
        let mut rest = Layout(frame);
        let kind = if rest.take("{\"type\":\"chunk\"") {
            "chunk"
        } else if rest.take("{\"type\":\"reasoning\"") {
            "reasoning"
        } else {
            return None;
        };
        rest.expect(",\"message_id\":\"")?;
        let message_id = rest.until_quote()?.parse().ok()?;
        rest.expect(",\"attempt\":")?;
        let attempt = u32::try_from(rest.number()?).ok()?;
        rest.expect(",\"index\":")?;
        rest.number()?;
        rest.expect(",\"text\":")?;
        let text = rest.plain_string()?;
        if rest.take(",\"published_at_us\":") {
            rest.number()?;
        }
        rest.expect(",\"seq\":")?;
        let seq = rest.number()?;
        rest.expect("}")?;
        if !rest.0.is_empty() {
            return None;
        }
        Some(Self {
            kind: Cow::Borrowed(kind),
            message_id: Some(message_id),
            attempt: Some(attempt),
            text: Some(JsonString(text)),
            finish_reason: None,
            usage: None,
            code: None,
            seq,
        })
    }
}

/// What is left of a frame being read by its layout.
struct Layout<'a>(&'a str);

impl<'a> Layout<'a> {
    fn take(&mut self, piece: &str) -> bool {
        match self.0.strip_prefix(piece) {
            Some(rest) => {
                self.0 = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, piece: &str) -> Option<()> {
        self.take(piece).then_some(())
    }

    /// Up to the next `"`, which is skipped.
    fn until_quote(&mut self) -> Option<&'a str> {
        let end = self.0.find('"')?;
        let (value, rest) = self.0.split_at(end);
        self.0 = &rest[1..];
        Some(value)
    }

    /// A JSON number as `u64`: digits only, no leading zero but `0` itself.
    fn number(&mut self) -> Option<u64> {
        let digits = self.0.bytes().take_while(u8::is_ascii_digit).count();
        let (number, rest) = self.0.split_at(digits);
        if number.is_empty() || (number.len() > 1 && number.starts_with('0')) {
            return None;
        }
        let value = number.parse().ok()?;
        self.0 = rest;
        Some(value)
    }

    /// A JSON string with nothing to unescape (no `\`, no control
    /// character): the literal, quotes included.
    fn plain_string(&mut self) -> Option<&'a str> {
        let body = self.0.strip_prefix('"')?;
        let end = body
            .bytes()
            .position(|b| b == b'"' || b == b'\\' || b < 0x20)?;
        if body.as_bytes()[end] != b'"' {
            return None;
        }
        let (literal, rest) = self.0.split_at(end + 2);
        self.0 = rest;
        Some(literal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Event;

    fn frame(event: &Event, seq: u64) -> String {
        protocol::frames::with_seq(&event.to_payload(), seq).unwrap()
    }

    fn chunk(text: &str, published_at_us: Option<u64>) -> Event {
        Event::Chunk {
            message_id: MessageId::new(),
            attempt: 2,
            index: 41,
            text: text.into(),
            published_at_us,
        }
    }

    #[test]
    fn the_worker_s_chunks_and_reasoning_are_read_by_their_layout_as_serde_reads_them() {
        let id = MessageId::new();
        let events = [
            chunk("Hello", Some(1_733_000_000_000_000)),
            chunk(" world", None),
            chunk("", Some(0)),
            chunk("é, 😀 and </script>", Some(7)),
            Event::Reasoning {
                message_id: id,
                attempt: 1,
                index: 0,
                text: "hmm".into(),
                published_at_us: None,
            },
            Event::Reasoning {
                message_id: id,
                attempt: u32::MAX,
                index: u32::MAX,
                text: "a thought".into(),
                published_at_us: Some(u64::MAX),
            },
        ];
        for (i, event) in events.iter().enumerate() {
            let seq = [0, 1, 10, 1_000_003, u64::MAX - 1, u64::MAX][i];
            let text = frame(event, seq);
            let by_layout = EventFrame::parse_delta(&text)
                .unwrap_or_else(|| panic!("not read by its layout: {text}"));
            assert_eq!(
                Some(&by_layout),
                EventFrame::parse_any(&text).as_ref(),
                "{text}"
            );
            assert_eq!(by_layout.message_id, event.message_id());
        }
    }

    #[test]
    fn frames_laid_out_otherwise_are_left_to_serde() {
        let id = MessageId::new();
        let escaped = [
            chunk("say \"hi\"", None),
            chunk("a\nb", None),
            chunk("back\\slash", None),
            chunk("\u{1}", None),
        ];
        for event in &escaped {
            let text = frame(event, 9);
            assert_eq!(EventFrame::parse_delta(&text), None, "{text}");
            let any = EventFrame::parse(&text).unwrap();
            assert_eq!(any.kind, "chunk");
            let stored: String = serde_json::from_str(any.text.unwrap().literal()).unwrap();
            let Event::Chunk { text, .. } = event else {
                unreachable!()
            };
            assert_eq!(&stored, text);
        }
        let others = [
            // Reordered, an extra field, spaces, a leading zero, a
            // number where the text goes, trailing bytes, a v1 id.
            format!(r#"{{"message_id":"{id}","type":"chunk","attempt":1,"index":0,"text":"x","seq":3}}"#),
            format!(r#"{{"type":"chunk","message_id":"{id}","attempt":1,"index":0,"text":"x","extra":1,"seq":3}}"#),
            format!(r#"{{"type":"chunk", "message_id":"{id}","attempt":1,"index":0,"text":"x","seq":3}}"#),
            format!(r#"{{"type":"chunk","message_id":"{id}","attempt":01,"index":0,"text":"x","seq":3}}"#),
            format!(r#"{{"type":"chunk","message_id":"{id}","attempt":1,"index":0,"text":42,"seq":3}}"#),
            format!(r#"{{"type":"chunk","message_id":"{id}","attempt":1,"index":0,"text":"x","seq":3}} "#),
            r#"{"type":"chunk","message_id":"c232ab00-9414-11ec-b3c8-9f6bdeced846","attempt":1,"index":0,"text":"x","seq":3}"#.to_string(),
            format!(r#"{{"type":"chunk","message_id":"{id}","attempt":4294967296,"index":0,"text":"x","seq":3}}"#),
            format!(r#"{{"type":"chunk","message_id":"{id}","attempt":1,"index":0,"text":"x","seq":18446744073709551616}}"#),
            frame(&Event::Cancelled { message_id: id }, 4),
            frame(&Event::Restart { message_id: id, attempt: 2 }, 5),
        ];
        for text in &others {
            assert_eq!(EventFrame::parse_delta(text), None, "{text}");
        }
        // What serde reads of them is what the renderer gets.
        let reordered = EventFrame::parse(&others[0]).unwrap();
        assert_eq!((reordered.message_id, reordered.seq), (Some(id), 3));
        assert_eq!(EventFrame::parse(&others[4]).unwrap().text, None);
        assert_eq!(EventFrame::parse(&others[5]).unwrap().seq, 3);
        assert_eq!(EventFrame::parse(&others[6]), None, "not a v4 id");
        assert_eq!(EventFrame::parse(&others[7]), None, "attempt overflows");
        assert_eq!(EventFrame::parse(&others[8]), None, "seq overflows");
    }

    #[test]
    fn a_cut_frame_is_read_by_neither() {
        let text = frame(&chunk("Hello", Some(5)), 77);
        for end in 0..text.len() {
            let cut = &text[..end];
            assert_eq!(EventFrame::parse(cut), None, "{cut}");
        }
    }
}
