//! The second renderer of a session's events: one answer's stored events
//! (the frames a socket gets) as the AI SDK's UI message stream, protocol
//! v1 (`ai`'s `ui-message-stream/ui-message-chunks.ts`). Only documented
//! fields are sent: some 5.x/6.x clients refused extra ones.
//!
//! Our events map as follows: the answer's first event → `start` (its
//! `messageId` is our message id, so a replay replaces the client's copy
//! instead of adding one) and `start-step`; `reasoning` → a reasoning part,
//! closed before the first text; `chunk` → a text part; `done` → the parts
//! closed, `finish-step`, `finish` (usage in `messageMetadata`);
//! `cancelled` → the parts closed, `abort`; `error` → `error` with a short
//! text of our own (never the model's); `restart` → `reset-step` and a new
//! `start-step`: the superseded attempt's parts are taken back.

use bytes::BufMut;
use protocol::{ErrorCode, FinishReason, MessageId};
use serde::Serialize;
use serde_json::json;

use super::frame::{EventFrame, JsonString};

/// One chunk of the UI message stream, serialised as its `data:` line.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub(crate) enum UiChunk<'a> {
    Start {
        #[serde(rename = "messageId")]
        message_id: MessageId,
    },
    StartStep,
    ReasoningStart {
        id: &'static str,
    },
    ReasoningDelta {
        id: &'static str,
        /// A JSON string, as stored.
        delta: JsonString<'a>,
    },
    ReasoningEnd {
        id: &'static str,
    },
    TextStart {
        id: &'static str,
    },
    TextDelta {
        id: &'static str,
        /// A JSON string, as stored.
        delta: JsonString<'a>,
    },
    TextEnd {
        id: &'static str,
    },
    /// ai ≥ 7.0.70: drop the current step's parts (a restarted answer).
    ResetStep,
    FinishStep,
    Finish {
        #[serde(rename = "finishReason")]
        finish_reason: &'static str,
        #[serde(rename = "messageMetadata", skip_serializing_if = "Option::is_none")]
        message_metadata: Option<serde_json::Value>,
    },
    Abort,
    Error {
        #[serde(rename = "errorText")]
        error_text: &'static str,
    },
}

impl UiChunk<'_> {
    /// The chunk's JSON, appended to `out`. A delta, nearly every chunk of
    /// an answer, is laid out here (its id is one of ours, its text the
    /// stored JSON string copied as it is); the rest goes through serde.
    pub(crate) fn write_json<B: BufMut>(&self, out: &mut B) -> serde_json::Result<()> {
        let (kind, id, delta) = match self {
            UiChunk::TextDelta { id, delta } => ("text-delta", id, delta),
            UiChunk::ReasoningDelta { id, delta } => ("reasoning-delta", id, delta),
            other => return serde_json::to_writer(out.writer(), other),
        };
        for piece in [
            "{\"type\":\"",
            kind,
            "\",\"id\":\"",
            id,
            "\",\"delta\":",
            delta.literal(),
            "}",
        ] {
            out.put_slice(piece.as_bytes());
        }
        Ok(())
    }
}

/// Part ids: a step holds at most one reasoning part and one text part, and
/// `reset-step` forgets them, so fixed ids are unique where they must be.
const REASONING_ID: &str = "reasoning";
const TEXT_ID: &str = "text";

/// What a rendered event asks of the response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Keep streaming.
    More,
    /// The answer ended: `[DONE]` follows, and the response ends.
    Finished,
}

/// One answer's rendering state: which parts are open, which attempt is
/// shown. Events of other messages of the session are skipped.
pub(crate) struct Renderer {
    message_id: MessageId,
    started: bool,
    attempt: u32,
    reasoning_open: bool,
    text_open: bool,
    /// Something of the current step reached the client: a restart must
    /// take it back.
    step_shown: bool,
}

impl Renderer {
    pub(crate) fn new(message_id: MessageId) -> Self {
        Self {
            message_id,
            started: false,
            attempt: 0,
            reasoning_open: false,
            text_open: false,
            step_shown: false,
        }
    }

    /// The chunks for one event, in order, handed to `emit`.
    pub(crate) fn render<'e>(
        &mut self,
        event: &'e EventFrame<'_>,
        mut emit: impl FnMut(UiChunk<'e>),
    ) -> Next {
        if event.message_id != Some(self.message_id) {
            return Next::More;
        }
        let attempt = event.attempt.unwrap_or(0);
        if !self.started {
            self.started = true;
            self.attempt = attempt;
            emit(UiChunk::Start {
                message_id: self.message_id,
            });
            emit(UiChunk::StartStep);
        }
        match event.kind.as_ref() {
            "reasoning" | "chunk" if attempt < self.attempt => {}
            "reasoning" => {
                let Some(text) = event.text else {
                    return Next::More;
                };
                self.attempt = attempt;
                if !self.reasoning_open {
                    self.reasoning_open = true;
                    emit(UiChunk::ReasoningStart { id: REASONING_ID });
                }
                self.step_shown = true;
                emit(UiChunk::ReasoningDelta {
                    id: REASONING_ID,
                    delta: text,
                });
            }
            "chunk" => {
                let Some(text) = event.text else {
                    return Next::More;
                };
                self.attempt = attempt;
                self.close_reasoning(&mut emit);
                if !self.text_open {
                    self.text_open = true;
                    emit(UiChunk::TextStart { id: TEXT_ID });
                }
                self.step_shown = true;
                emit(UiChunk::TextDelta {
                    id: TEXT_ID,
                    delta: text,
                });
            }
            "restart" if attempt > self.attempt => {
                self.attempt = attempt;
                if self.step_shown {
                    // The parts are forgotten, not closed: `reset-step`
                    // takes the whole step back.
                    self.reasoning_open = false;
                    self.text_open = false;
                    self.step_shown = false;
                    emit(UiChunk::ResetStep);
                    emit(UiChunk::StartStep);
                }
            }
            "done" => {
                self.close_parts(&mut emit);
                emit(UiChunk::FinishStep);
                emit(UiChunk::Finish {
                    finish_reason: finish_reason(event.finish_reason.as_ref()),
                    message_metadata: event.usage.map(|u| {
                        json!({"usage": {
                            "inputTokens": u.prompt_tokens,
                            "outputTokens": u.completion_tokens,
                        }})
                    }),
                });
                return Next::Finished;
            }
            "cancelled" => {
                self.close_parts(&mut emit);
                emit(UiChunk::Abort);
                return Next::Finished;
            }
            "error" => {
                self.close_parts(&mut emit);
                emit(UiChunk::Error {
                    error_text: error_text(event.code),
                });
                return Next::Finished;
            }
            // The question's echo, a stale restart, or a kind this gateway
            // does not know: nothing to show.
            _ => {}
        }
        Next::More
    }

    fn close_reasoning<'e>(&mut self, emit: &mut impl FnMut(UiChunk<'e>)) {
        if std::mem::take(&mut self.reasoning_open) {
            emit(UiChunk::ReasoningEnd { id: REASONING_ID });
        }
    }

    fn close_parts<'e>(&mut self, emit: &mut impl FnMut(UiChunk<'e>)) {
        self.close_reasoning(emit);
        if std::mem::take(&mut self.text_open) {
            emit(UiChunk::TextEnd { id: TEXT_ID });
        }
    }
}

/// The SDK knows `stop`, `length` and `other` in every version since 5.
fn finish_reason(reason: Option<&FinishReason>) -> &'static str {
    match reason {
        Some(FinishReason::Stop) | None => "stop",
        Some(FinishReason::Length) => "length",
        Some(FinishReason::Other(_)) => "other",
    }
}

/// A short text for a failed answer: the code's meaning, never the model's
/// own error (it may hold anything).
pub(crate) fn error_text(code: Option<ErrorCode>) -> &'static str {
    match code {
        Some(ErrorCode::Overloaded) => "the service is at capacity; try again shortly",
        Some(ErrorCode::ModelFailed) => "the model refused the request",
        Some(ErrorCode::RetriesExhausted) => "the answer failed after several attempts",
        Some(ErrorCode::BadRequest) => "no model serves this request",
        _ => "the answer failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Event, Usage};

    fn frame(event: &Event, seq: u64) -> String {
        protocol::frames::with_seq(&event.to_payload(), seq).unwrap()
    }

    fn render_all(renderer: &mut Renderer, events: &[Event]) -> (Vec<String>, Next) {
        let mut out = Vec::new();
        let mut next = Next::More;
        for (i, event) in events.iter().enumerate() {
            let text = frame(event, i as u64 + 1);
            let parsed = EventFrame::parse(&text).unwrap();
            next = renderer.render(&parsed, |c| out.push(serde_json::to_string(&c).unwrap()));
        }
        (out, next)
    }

    fn reasoning(id: MessageId, attempt: u32, index: u32, text: &str) -> Event {
        Event::Reasoning {
            message_id: id,
            attempt,
            index,
            text: text.into(),
            published_at_us: None,
        }
    }

    fn chunk(id: MessageId, attempt: u32, index: u32, text: &str) -> Event {
        Event::Chunk {
            message_id: id,
            attempt,
            index,
            text: text.into(),
            published_at_us: Some(1),
        }
    }

    #[test]
    fn an_answer_with_reasoning_renders_as_the_sdk_expects() {
        let id = MessageId::new();
        let other = MessageId::new();
        let events = [
            Event::UserMessage {
                message_id: id,
                content: "hi".into(),
                replaces: None,
            },
            reasoning(id, 1, 0, "hmm"),
            chunk(other, 1, 0, "not ours"),
            chunk(id, 1, 0, "Hel"),
            chunk(id, 1, 1, "lo"),
            Event::Done {
                message_id: id,
                attempt: 1,
                finish_reason: FinishReason::Stop,
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2,
                }),
            },
        ];
        let (out, next) = render_all(&mut Renderer::new(id), &events);
        assert_eq!(next, Next::Finished);
        assert_eq!(
            out,
            vec![
                format!(r#"{{"type":"start","messageId":"{id}"}}"#),
                r#"{"type":"start-step"}"#.into(),
                r#"{"type":"reasoning-start","id":"reasoning"}"#.into(),
                r#"{"type":"reasoning-delta","id":"reasoning","delta":"hmm"}"#.into(),
                r#"{"type":"reasoning-end","id":"reasoning"}"#.into(),
                r#"{"type":"text-start","id":"text"}"#.into(),
                r#"{"type":"text-delta","id":"text","delta":"Hel"}"#.into(),
                r#"{"type":"text-delta","id":"text","delta":"lo"}"#.into(),
                r#"{"type":"text-end","id":"text"}"#.into(),
                r#"{"type":"finish-step"}"#.into(),
                r#"{"type":"finish","finishReason":"stop","messageMetadata":{"usage":{"inputTokens":3,"outputTokens":2}}}"#.into(),
            ]
        );
    }

    #[test]
    fn a_delta_carries_the_stored_text_exactly_whatever_it_holds() {
        let id = MessageId::new();
        let text = "say \"hi\" \\ then\n\ta line: é, 😀, \u{1} and </script>";
        let events = [reasoning(id, 1, 0, text), chunk(id, 1, 0, text)];
        let (out, _) = render_all(&mut Renderer::new(id), &events);
        let deltas: Vec<serde_json::Value> = out
            .iter()
            .map(|c| serde_json::from_str::<serde_json::Value>(c).unwrap())
            .filter(|c| c.get("delta").is_some())
            .collect();
        assert_eq!(deltas.len(), 2, "{out:?}");
        assert_eq!(deltas[0]["type"], "reasoning-delta");
        assert_eq!(deltas[1]["type"], "text-delta");
        for delta in &deltas {
            assert_eq!(delta["delta"], text);
        }
    }

    #[test]
    fn the_hand_laid_deltas_are_what_serde_writes() {
        let id = MessageId::new();
        let events = [
            reasoning(id, 1, 0, "a \"quoted\" thought\n"),
            chunk(id, 1, 0, "Hel"),
            chunk(id, 1, 1, "lo \\ é"),
            Event::Cancelled { message_id: id },
        ];
        let mut renderer = Renderer::new(id);
        let mut compared = 0;
        for (i, event) in events.iter().enumerate() {
            let text = frame(event, i as u64 + 1);
            let parsed = EventFrame::parse(&text).unwrap();
            renderer.render(&parsed, |c| {
                let mut written = Vec::new();
                c.write_json(&mut written).unwrap();
                assert_eq!(
                    String::from_utf8(written).unwrap(),
                    serde_json::to_string(&c).unwrap()
                );
                compared += 1;
            });
        }
        // start, start-step, the reasoning's three, text-start, two deltas,
        // text-end, abort.
        assert_eq!(compared, 10);
    }

    #[test]
    fn a_text_that_is_not_a_string_shows_nothing() {
        let id = MessageId::new();
        let frame = format!(
            r#"{{"type":"chunk","message_id":"{id}","attempt":1,"index":0,"text":42,"seq":7}}"#
        );
        let parsed = EventFrame::parse(&frame).unwrap();
        let mut out = Vec::new();
        Renderer::new(id).render(&parsed, |c| out.push(serde_json::to_string(&c).unwrap()));
        assert!(!out.iter().any(|c| c.contains("delta")), "{out:?}");
    }

    #[test]
    fn a_restart_takes_the_superseded_attempt_back() {
        let id = MessageId::new();
        let events = [
            chunk(id, 1, 0, "old"),
            Event::Restart {
                message_id: id,
                attempt: 2,
            },
            // A late chunk of the old attempt is never shown.
            chunk(id, 1, 1, "stale"),
            chunk(id, 2, 0, "new"),
            Event::Cancelled { message_id: id },
        ];
        let (out, next) = render_all(&mut Renderer::new(id), &events);
        assert_eq!(next, Next::Finished);
        let types: Vec<&str> = out
            .iter()
            .map(|c| c.split('"').nth(3).unwrap_or(""))
            .collect();
        assert_eq!(
            types,
            [
                "start",
                "start-step",
                "text-start",
                "text-delta",
                "reset-step",
                "start-step",
                "text-start",
                "text-delta",
                "text-end",
                "abort"
            ]
        );
        assert!(!out.iter().any(|c| c.contains("stale")));
    }

    #[test]
    fn a_replay_that_starts_at_the_restart_shows_no_reset() {
        let id = MessageId::new();
        let events = [
            Event::Restart {
                message_id: id,
                attempt: 3,
            },
            chunk(id, 3, 0, "new"),
            Event::Error {
                message_id: Some(id),
                code: ErrorCode::ModelFailed,
                message: "raw upstream detail".into(),
            },
        ];
        let (out, next) = render_all(&mut Renderer::new(id), &events);
        assert_eq!(next, Next::Finished);
        assert!(!out.iter().any(|c| c.contains("reset-step")));
        assert!(!out.iter().any(|c| c.contains("raw upstream")));
        assert_eq!(
            out.last().unwrap(),
            r#"{"type":"error","errorText":"the model refused the request"}"#
        );
    }
}
