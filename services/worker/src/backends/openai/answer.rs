//! One answer of the `openai` backend: the request sent, then the event
//! stream read into tokens within the timeouts and size bounds.
//!
//! Timeouts fit streaming: until the first token (of the answer or of its
//! reasoning) the first-token timeout runs; after it, the idle timeout runs
//! from the last token or `data:` event (keep-alive comments do not count).
//! An answer whose tokens keep flowing is never cut by time; its size is
//! bounded instead, and a longer one ends with `finish_reason` `length`.

use std::collections::VecDeque;
use std::time::Duration;

use protocol::{FinishReason, Usage};
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde::Deserialize;
use tokio::time::Instant;

use super::sse::{EventReader, SseError};
use super::think::{Piece, ThinkSplitter};
use super::{error_chain, truncate, ERROR_MESSAGE_LIMIT};
use crate::backends::{BackendError, ModelOutput};

/// How much of an error body is read to find the server's message.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

/// The timeouts and bounds of one answer (from `OpenAiArgs`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) first_token: Option<Duration>,
    pub(super) idle: Option<Duration>,
    pub(super) max_event_bytes: usize,
    pub(super) max_answer_bytes: usize,
}

/// The state of one answer, driven by [`futures::stream::unfold`].
pub(super) enum Answer {
    /// Not sent yet (the request runs only when the stream is first polled).
    Starting(Box<reqwest::RequestBuilder>, Limits),
    Streaming(Box<Streaming>),
    /// `Finished` or an error was the last item.
    Ended,
}

impl Answer {
    pub(super) async fn step(self) -> Option<(Result<ModelOutput, BackendError>, Answer)> {
        let mut streaming = match self {
            Answer::Ended => return None,
            Answer::Streaming(streaming) => streaming,
            Answer::Starting(request, limits) => {
                let mut clock = Clock::new(limits);
                match send(*request, &mut clock, limits.max_event_bytes).await {
                    Ok(events) => Box::new(Streaming::new(events, clock, limits)),
                    Err(e) => return Some((Err(e), Answer::Ended)),
                }
            }
        };
        match streaming.next().await {
            Ok(finished @ ModelOutput::Finished { .. }) => Some((Ok(finished), Answer::Ended)),
            Ok(output) => Some((Ok(output), Answer::Streaming(streaming))),
            Err(e) => Some((Err(e), Answer::Ended)),
        }
    }
}

/// The deadline the next read must meet: the first-token timeout until a
/// token came (when it is set), then the idle timeout from the last sign
/// of life.
struct Clock {
    limits: Limits,
    deadline: Option<Instant>,
    /// A token (or the finish) came: the idle timeout runs.
    answering: bool,
}

impl Clock {
    fn new(limits: Limits) -> Self {
        let mut clock = Self {
            limits,
            deadline: None,
            answering: limits.first_token.is_none(),
        };
        clock.deadline = match limits.first_token {
            Some(first) => Some(Instant::now() + first),
            None => clock.idle_deadline(),
        };
        clock
    }

    fn idle_deadline(&self) -> Option<Instant> {
        self.limits.idle.map(|idle| Instant::now() + idle)
    }

    /// A `data:` event came: it keeps an answer alive, but is not its
    /// first token.
    fn data(&mut self) {
        if self.answering {
            self.deadline = self.idle_deadline();
        }
    }

    /// A token of the answer or of its reasoning, or the finish, came.
    fn token(&mut self) {
        self.answering = true;
        self.deadline = self.idle_deadline();
    }

    /// Awaits `future` within the deadline.
    async fn within<F: std::future::Future>(&self, future: F) -> Result<F::Output, BackendError> {
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, future)
                .await
                .map_err(|_| self.timed_out()),
            None => Ok(future.await),
        }
    }

    fn timed_out(&self) -> BackendError {
        let message = match (self.answering, self.limits.first_token, self.limits.idle) {
            (false, Some(first), _) => format!("no first token within {first:?}"),
            (_, _, Some(idle)) => format!("no token for {idle:?} (idle timeout)"),
            // No deadline is set without a timeout.
            (_, _, None) => "timed out".to_string(),
        };
        BackendError::Unavailable {
            message,
            retry_after: None,
        }
    }
}

/// Sends the request and checks its status: the events of a 2xx answer, or
/// the error a failed one means.
async fn send(
    request: reqwest::RequestBuilder,
    clock: &mut Clock,
    max_event_bytes: usize,
) -> Result<EventReader, BackendError> {
    let response = clock
        .within(request.send())
        .await?
        .map_err(|e| BackendError::Unavailable {
            message: format!("request failed: {}", error_chain(&e)),
            retry_after: None,
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(EventReader::new(response.bytes_stream(), max_event_bytes));
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let message = error_message(response).await;
    let message = format!("{status}: {message}");
    if status.is_client_error()
        && status != StatusCode::TOO_MANY_REQUESTS
        && status != StatusCode::REQUEST_TIMEOUT
    {
        Err(BackendError::Rejected(message))
    } else {
        Err(BackendError::Unavailable {
            message,
            retry_after,
        })
    }
}

/// The server's own words from an error body: `error.message` when it is
/// JSON, else the start of the text.
async fn error_message(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(bytes)) => body.extend_from_slice(&bytes),
            Ok(None) | Err(_) => break,
        }
    }
    let text = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(parsed) => parsed.error.message(),
        Err(_) => String::from_utf8_lossy(&body).trim().to_string(),
    };
    let text = if text.is_empty() {
        "no error message".to_string()
    } else {
        text
    };
    truncate(text, ERROR_MESSAGE_LIMIT)
}

/// One `data:` payload of the stream. Every field is optional: servers
/// differ in what they send (and a mid-stream `error` object is possible).
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
    #[serde(default)]
    error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    /// vLLM, llama.cpp's server, DeepSeek.
    #[serde(default)]
    reasoning_content: Option<String>,
    /// Ollama, OpenRouter.
    #[serde(default)]
    reasoning: Option<String>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

/// `{"error": {"message": ...}}` (OpenAI, vLLM, llama.cpp) or
/// `{"error": "..."}` (Ollama).
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorDetail {
    Object { message: String },
    Text(String),
}

impl ErrorDetail {
    fn message(self) -> String {
        match self {
            ErrorDetail::Object { message } | ErrorDetail::Text(message) => message,
        }
    }
}

/// An answer being read.
pub(super) struct Streaming {
    events: EventReader,
    clock: Clock,
    limits: Limits,
    think: ThinkSplitter,
    /// Outputs sorted from the events but not handed out yet (one delta can
    /// end the reasoning and start the answer).
    ready: VecDeque<ModelOutput>,
    /// `Finished` is in `ready`: nothing more is read or queued.
    closed: bool,
    answer_bytes: usize,
    reasoning_bytes: usize,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
}

impl Streaming {
    fn new(events: EventReader, clock: Clock, limits: Limits) -> Self {
        Self {
            events,
            clock,
            limits,
            think: ThinkSplitter::default(),
            ready: VecDeque::new(),
            closed: false,
            answer_bytes: 0,
            reasoning_bytes: 0,
            finish_reason: None,
            usage: None,
        }
    }

    /// The next token, or the end of the answer.
    async fn next(&mut self) -> Result<ModelOutput, BackendError> {
        loop {
            if let Some(output) = self.ready.pop_front() {
                return Ok(output);
            }
            let data = match self.clock.within(self.events.next()).await? {
                Some(Ok(data)) => data,
                Some(Err(e @ SseError::TooLarge { .. })) => {
                    // The server's fault, and it would do it again.
                    return Err(BackendError::Rejected(e.to_string()));
                }
                Some(Err(e)) => {
                    return Err(BackendError::Unavailable {
                        message: e.to_string(),
                        retry_after: None,
                    })
                }
                None => {
                    // Some servers close without `[DONE]` after the finish.
                    match self.finish_reason.take() {
                        Some(finish_reason) => self.finish(finish_reason),
                        None => {
                            return Err(BackendError::Unavailable {
                                message: "stream ended early".into(),
                                retry_after: None,
                            })
                        }
                    }
                    continue;
                }
            };
            self.clock.data();
            let data = data.trim();
            if data == "[DONE]" {
                let finish_reason = self.finish_reason.take().unwrap_or(FinishReason::Stop);
                self.finish(finish_reason);
                continue;
            }
            if data.is_empty() {
                continue;
            }
            let chunk: Chunk =
                serde_json::from_str(data).map_err(|e| BackendError::Unavailable {
                    message: format!("malformed chunk: {e}"),
                    retry_after: None,
                })?;
            self.read_chunk(chunk)?;
        }
    }

    fn read_chunk(&mut self, chunk: Chunk) -> Result<(), BackendError> {
        if let Some(error) = chunk.error {
            // The server gave up on this answer and said why: its words
            // are the client's error, and the job is not tried again.
            return Err(BackendError::Rejected(truncate(
                error.message(),
                ERROR_MESSAGE_LIMIT,
            )));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(Usage {
                prompt_tokens: u32::try_from(usage.prompt_tokens).unwrap_or(u32::MAX),
                completion_tokens: u32::try_from(usage.completion_tokens).unwrap_or(u32::MAX),
            });
        }
        let Some(choice) = chunk.choices.into_iter().next() else {
            return Ok(());
        };
        if let Some(delta) = choice.delta {
            // Some servers send both names for the same text.
            if let Some(reasoning) = delta.reasoning_content.or(delta.reasoning) {
                if !reasoning.is_empty() {
                    self.clock.token();
                    self.emit(Piece::Reasoning(reasoning));
                }
            }
            if let Some(content) = delta.content {
                if !content.is_empty() {
                    self.clock.token();
                    for piece in self.think.push(&content) {
                        self.emit(piece);
                    }
                }
            }
        }
        if let Some(reason) = choice.finish_reason {
            self.clock.token();
            self.finish_reason = Some(finish_reason(&reason));
        }
        Ok(())
    }

    /// Queues a piece of the answer or of its reasoning, within its bound:
    /// the piece that crosses it is cut there and the answer ends with
    /// `length` (the rest of the stream is not read).
    fn emit(&mut self, piece: Piece) {
        if self.closed {
            return;
        }
        let (mut text, is_reasoning) = match piece {
            Piece::Answer(text) => (text, false),
            Piece::Reasoning(text) => (text, true),
        };
        let sent = if is_reasoning {
            &mut self.reasoning_bytes
        } else {
            &mut self.answer_bytes
        };
        let room = self.limits.max_answer_bytes.saturating_sub(*sent);
        let over = text.len() > room;
        if over {
            text.truncate(floor_char_boundary(&text, room));
        }
        *sent += text.len();
        if !text.is_empty() {
            self.ready.push_back(if is_reasoning {
                ModelOutput::Reasoning(text)
            } else {
                ModelOutput::Token(text)
            });
        }
        if over {
            self.finish(FinishReason::Length);
        }
    }

    /// Queues the end of the answer, after anything the `<think>` splitter
    /// still held.
    fn finish(&mut self, finish_reason: FinishReason) {
        if self.closed {
            return;
        }
        if let Some(piece) = self.think.finish() {
            self.emit(piece);
            if self.closed {
                return;
            }
        }
        self.closed = true;
        self.ready.push_back(ModelOutput::Finished {
            finish_reason,
            usage: self.usage.take(),
        });
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        other => FinishReason::Other(other.to_string()),
    }
}

/// The largest index `<= at` that starts a character of `text`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}
