//! An OpenAI-compatible backend: `POST {base_url}/v1/chat/completions` with
//! `stream: true`, as OpenAI, vLLM, llama.cpp's server, Ollama and LiteLLM
//! serve it.
//!
//! The request carries the conversation so far (the session's finished
//! turns, most recent kept first within `--openai-context-turns` and
//! `--openai-context-chars`) and the new question. The answer is read as
//! server-sent events straight from the response body, inside the returned
//! stream: nothing is spawned, so dropping the stream drops the body and the
//! HTTP connection closes — that is how a cancel reaches the model server.
//!
//! Failures are sorted for the worker: a 4xx (other than 408 and 429) is the
//! request's fault and is not retried ([`BackendError::Rejected`]); 429,
//! 5xx, refused connections, timeouts and a stream cut short are passing
//! ([`BackendError::Unavailable`], with the server's `Retry-After`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use eventsource_stream::{EventStreamError, Eventsource as _};
use futures::stream::BoxStream;
use futures::StreamExt;
use protocol::records::{Turn, TurnStatus};
use protocol::{FinishReason, Usage};
use reqwest::header::RETRY_AFTER;
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{BackendError, Generation, ModelBackend, ModelOutput, OutputStream};

/// Flags and environment variables of the `openai` backend.
#[derive(Clone, clap::Args)]
pub struct OpenAiArgs {
    /// Base URL of the server, without `/v1` (e.g. `http://127.0.0.1:8081`);
    /// a URL ending in `/v1` is accepted as well.
    #[arg(
        long = "openai-base-url",
        env = "OPENAI_BASE_URL",
        default_value = "https://api.openai.com"
    )]
    pub base_url: String,
    /// The default model, used when a request names none.
    #[arg(
        long = "openai-model",
        env = "OPENAI_MODEL",
        default_value = "gpt-4o-mini"
    )]
    pub model: String,
    /// Other models a request may name, comma separated.
    #[arg(long = "openai-models", env = "OPENAI_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// The API key (never logged). Prefer `--openai-api-key-file`.
    #[arg(
        long = "openai-api-key",
        env = "OPENAI_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// A file holding the API key (surrounding whitespace is ignored).
    #[arg(long = "openai-api-key-file", env = "OPENAI_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    #[arg(long = "openai-temperature", env = "OPENAI_TEMPERATURE")]
    pub temperature: Option<f32>,
    #[arg(long = "openai-max-tokens", env = "OPENAI_MAX_TOKENS")]
    pub max_tokens: Option<u32>,
    /// Whole-request timeout, seconds (0 = none).
    #[arg(
        long = "openai-timeout-secs",
        env = "OPENAI_TIMEOUT_SECS",
        default_value_t = 120
    )]
    pub timeout_secs: u64,
    /// How long to wait for the first token, from the start of the request,
    /// seconds (0 = only the whole-request timeout).
    #[arg(
        long = "openai-first-token-timeout-secs",
        env = "OPENAI_FIRST_TOKEN_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub first_token_timeout_secs: u64,
    /// Optional system prompt sent first.
    #[arg(long = "openai-system-prompt", env = "OPENAI_SYSTEM_PROMPT")]
    pub system_prompt: Option<String>,
    /// Earlier turns sent as context.
    #[arg(
        long = "openai-context-turns",
        env = "OPENAI_CONTEXT_TURNS",
        default_value_t = 20
    )]
    pub context_turns: usize,
    /// Characters of earlier turns sent as context, at most.
    #[arg(
        long = "openai-context-chars",
        env = "OPENAI_CONTEXT_CHARS",
        default_value_t = 24_000
    )]
    pub context_chars: usize,
}

/// Written by hand so that the API key never reaches a log line.
impl fmt::Debug for OpenAiArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiArgs")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("models", &self.models)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_file", &self.api_key_file)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .field("timeout_secs", &self.timeout_secs)
            .field("first_token_timeout_secs", &self.first_token_timeout_secs)
            .field("system_prompt", &self.system_prompt)
            .field("context_turns", &self.context_turns)
            .field("context_chars", &self.context_chars)
            .finish()
    }
}

/// How much of an error body is read to find the server's message.
const ERROR_BODY_LIMIT: usize = 16 * 1024;
/// How much of the server's error message is passed on to the client.
const ERROR_MESSAGE_LIMIT: usize = 500;

pub struct OpenAiBackend {
    args: OpenAiArgs,
    endpoint: Url,
    api_key: Option<String>,
    client: reqwest::Client,
}

impl OpenAiBackend {
    /// Checks the base URL, reads the key file, and builds the HTTP client.
    pub fn new(args: OpenAiArgs) -> anyhow::Result<Self> {
        let endpoint = endpoint(&args.base_url)?;
        let api_key = api_key(&args)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        tracing::info!(
            endpoint = %endpoint,
            model = %args.model,
            models = ?args.models,
            key = api_key.is_some(),
            "openai backend configured"
        );
        Ok(Self {
            args,
            endpoint,
            api_key,
            client,
        })
    }

    fn request_body<'a>(&'a self, generation: &'a Generation) -> ChatCompletionRequest<'a> {
        let mut messages = Vec::new();
        if let Some(system) = self.args.system_prompt.as_deref() {
            if !system.trim().is_empty() {
                messages.push(Message {
                    role: "system",
                    content: system,
                });
            }
        }
        for turn in context(
            &generation.history,
            self.args.context_turns,
            self.args.context_chars,
        ) {
            messages.push(Message {
                role: "user",
                content: &turn.user,
            });
            messages.push(Message {
                role: "assistant",
                content: &turn.assistant,
            });
        }
        messages.push(Message {
            role: "user",
            content: &generation.prompt,
        });
        ChatCompletionRequest {
            model: generation.model.as_deref().unwrap_or(&self.args.model),
            messages,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            temperature: self.args.temperature,
            max_tokens: self.args.max_tokens,
        }
    }
}

impl ModelBackend for OpenAiBackend {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn context_turns(&self) -> usize {
        self.args.context_turns
    }

    fn serves_model(&self, model: &str) -> bool {
        model == self.args.model || self.args.models.iter().any(|m| m == model)
    }

    fn generate(&self, generation: Generation) -> OutputStream {
        let body = self.request_body(&generation);
        tracing::debug!(
            model = body.model,
            messages = body.messages.len(),
            "asking the model"
        );
        let mut request = self.client.post(self.endpoint.clone()).json(&body);
        if let Some(key) = &self.api_key {
            // reqwest marks the header sensitive: it is never printed.
            request = request.bearer_auth(key);
        }
        if let Some(timeout) = secs(self.args.timeout_secs) {
            request = request.timeout(timeout);
        }
        let first_token = secs(self.args.first_token_timeout_secs);
        futures::stream::unfold(
            Answer::Starting(Box::new(request), first_token),
            Answer::step,
        )
        .boxed()
    }
}

fn secs(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// `{base}/v1/chat/completions`, from a base with or without `/v1`.
fn endpoint(base_url: &str) -> anyhow::Result<Url> {
    let base = Url::parse(base_url.trim())
        .with_context(|| format!("--openai-base-url {base_url:?} is not a URL"))?;
    anyhow::ensure!(
        matches!(base.scheme(), "http" | "https"),
        "--openai-base-url {base_url:?} must be http or https"
    );
    let path = base.path().trim_end_matches('/');
    let path = if path.ends_with("/v1") {
        format!("{path}/chat/completions")
    } else {
        format!("{path}/v1/chat/completions")
    };
    let mut url = base.clone();
    url.set_path(&path);
    Ok(url)
}

/// The key from `--openai-api-key` or the file `--openai-api-key-file`;
/// `None` for servers that need none (llama.cpp, Ollama).
fn api_key(args: &OpenAiArgs) -> anyhow::Result<Option<String>> {
    let key = match (&args.api_key, &args.api_key_file) {
        (Some(_), Some(_)) => {
            anyhow::bail!("set either --openai-api-key or --openai-api-key-file, not both")
        }
        (Some(key), None) => key.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the API key file {}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    Ok((!key.is_empty()).then_some(key))
}

/// The earlier turns sent as context, oldest first: what the user saw — done
/// answers and the partial text of cancelled ones, never failed turns — the
/// most recent first within `max_turns` and `max_chars`.
pub fn context(history: &[Turn], max_turns: usize, max_chars: usize) -> Vec<&Turn> {
    let mut kept = Vec::new();
    let mut chars = 0usize;
    let shown = history.iter().rev().filter(|t| match t.status {
        TurnStatus::Done => true,
        TurnStatus::Cancelled => !t.assistant.is_empty(),
        TurnStatus::Failed => false,
    });
    for turn in shown.take(max_turns) {
        let size = turn.user.chars().count() + turn.assistant.chars().count();
        if chars + size > max_chars {
            break;
        }
        chars += size;
        kept.push(turn);
    }
    kept.reverse();
    kept
}

#[derive(Serialize)]
struct ChatCompletionRequest<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    stream: bool,
    /// Asks for a last chunk with the token counts; servers that do not know
    /// the field ignore it.
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
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

type SseStream =
    BoxStream<'static, Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>>;

/// The state of one answer, driven by [`futures::stream::unfold`].
enum Answer {
    /// Not sent yet (the request runs only when the stream is first polled).
    Starting(Box<reqwest::RequestBuilder>, Option<Duration>),
    Streaming(Box<Streaming>),
    /// `Finished` or an error was the last item.
    Ended,
}

struct Streaming {
    events: SseStream,
    /// Until the first token (or the finish) arrives.
    first_token_deadline: Option<Instant>,
    first_token_timeout: Option<Duration>,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
}

impl Answer {
    async fn step(self) -> Option<(Result<ModelOutput, BackendError>, Answer)> {
        let mut streaming = match self {
            Answer::Ended => return None,
            Answer::Streaming(streaming) => streaming,
            Answer::Starting(request, first_token_timeout) => {
                let deadline = first_token_timeout.map(|t| Instant::now() + t);
                match send(*request, deadline, first_token_timeout).await {
                    Ok(events) => Box::new(Streaming {
                        events,
                        first_token_deadline: deadline,
                        first_token_timeout,
                        finish_reason: None,
                        usage: None,
                    }),
                    Err(e) => return Some((Err(e), Answer::Ended)),
                }
            }
        };
        match streaming.next().await {
            Ok(output @ ModelOutput::Token(_)) => Some((Ok(output), Answer::Streaming(streaming))),
            Ok(finished @ ModelOutput::Finished { .. }) => Some((Ok(finished), Answer::Ended)),
            Err(e) => Some((Err(e), Answer::Ended)),
        }
    }
}

/// Sends the request and checks its status: the events of a 2xx answer, or
/// the error a failed one means.
async fn send(
    request: reqwest::RequestBuilder,
    deadline: Option<Instant>,
    first_token_timeout: Option<Duration>,
) -> Result<SseStream, BackendError> {
    let sent = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, request.send()).await {
            Ok(sent) => sent,
            Err(_) => return Err(no_first_token(first_token_timeout)),
        },
        None => request.send().await,
    };
    let response = sent.map_err(|e| BackendError::Unavailable {
        message: format!("request failed: {}", error_chain(&e)),
        retry_after: None,
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response.bytes_stream().eventsource().boxed());
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

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// reqwest's top-level message is terse ("error sending request"); the
/// causes say what happened (connection refused, timed out).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn no_first_token(timeout: Option<Duration>) -> BackendError {
    BackendError::Unavailable {
        message: format!("no first token within {timeout:?}"),
        retry_after: None,
    }
}

impl Streaming {
    /// The next token, or the end of the answer.
    async fn next(&mut self) -> Result<ModelOutput, BackendError> {
        loop {
            let event = match self.first_token_deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, self.events.next())
                    .await
                    .map_err(|_| no_first_token(self.first_token_timeout))?,
                None => self.events.next().await,
            };
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    let message = match e {
                        EventStreamError::Transport(e) => {
                            format!("reading the stream: {}", error_chain(&e))
                        }
                        other => format!("malformed event stream: {other}"),
                    };
                    return Err(BackendError::Unavailable {
                        message,
                        retry_after: None,
                    });
                }
                None => {
                    // Some servers close without `[DONE]` after the finish.
                    return match self.finish_reason.take() {
                        Some(finish_reason) => Ok(self.finished(finish_reason)),
                        None => Err(BackendError::Unavailable {
                            message: "stream ended early".into(),
                            retry_after: None,
                        }),
                    };
                }
            };
            let data = event.data.trim();
            if data == "[DONE]" {
                let finish_reason = self.finish_reason.take().unwrap_or(FinishReason::Stop);
                return Ok(self.finished(finish_reason));
            }
            if data.is_empty() {
                continue;
            }
            let chunk: Chunk =
                serde_json::from_str(data).map_err(|e| BackendError::Unavailable {
                    message: format!("malformed chunk: {e}"),
                    retry_after: None,
                })?;
            if let Some(error) = chunk.error {
                return Err(BackendError::Unavailable {
                    message: truncate(error.message(), ERROR_MESSAGE_LIMIT),
                    retry_after: None,
                });
            }
            if let Some(usage) = chunk.usage {
                self.usage = Some(Usage {
                    prompt_tokens: u32::try_from(usage.prompt_tokens).unwrap_or(u32::MAX),
                    completion_tokens: u32::try_from(usage.completion_tokens).unwrap_or(u32::MAX),
                });
            }
            let Some(choice) = chunk.choices.into_iter().next() else {
                continue;
            };
            if let Some(reason) = choice.finish_reason {
                self.first_token_deadline = None;
                self.finish_reason = Some(finish_reason(&reason));
            }
            if let Some(content) = choice.delta.and_then(|d| d.content) {
                if !content.is_empty() {
                    self.first_token_deadline = None;
                    return Ok(ModelOutput::Token(content));
                }
            }
        }
    }

    fn finished(&mut self, finish_reason: FinishReason) -> ModelOutput {
        ModelOutput::Finished {
            finish_reason,
            usage: self.usage.take(),
        }
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        other => FinishReason::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::MessageId;

    fn turn(user: &str, assistant: &str, status: TurnStatus) -> Turn {
        Turn {
            message_id: MessageId::new(),
            user: user.into(),
            assistant: assistant.into(),
            status,
            created_at: 0,
            finished_at: 0,
            attempt: 1,
            finish_reason: None,
            usage: None,
            user_seq: 0,
        }
    }

    #[test]
    fn endpoint_accepts_a_base_with_or_without_v1() {
        for base in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/v1",
            "http://127.0.0.1:8080/v1/",
        ] {
            assert_eq!(
                endpoint(base).unwrap().as_str(),
                "http://127.0.0.1:8080/v1/chat/completions",
                "{base}"
            );
        }
        assert_eq!(
            endpoint("https://proxy.example/openai").unwrap().as_str(),
            "https://proxy.example/openai/v1/chat/completions"
        );
        assert!(endpoint("not a url").is_err());
        assert!(endpoint("ftp://host").is_err());
    }

    #[test]
    fn context_keeps_what_the_user_saw_most_recent_first() {
        let history = vec![
            turn("q1", "a1", TurnStatus::Done),
            turn("q2", "", TurnStatus::Failed),
            turn("q3", "partial", TurnStatus::Cancelled),
            turn("q4", "", TurnStatus::Cancelled),
            turn("q5", "a5", TurnStatus::Done),
        ];
        let users = |turns: Vec<&Turn>| turns.iter().map(|t| t.user.clone()).collect::<Vec<_>>();
        assert_eq!(users(context(&history, 10, 1000)), ["q1", "q3", "q5"]);
        assert_eq!(users(context(&history, 2, 1000)), ["q3", "q5"]);
        // "q5a5" is 4 chars, "q3partial" 9: 12 chars keep only the last.
        assert_eq!(users(context(&history, 10, 12)), ["q5"]);
        assert!(context(&history, 0, 1000).is_empty());
    }

    #[test]
    fn debug_never_shows_the_key() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            openai: OpenAiArgs,
        }
        let cli = Cli::parse_from(["x", "--openai-api-key", "sk-secret-123"]);
        let text = format!("{:?}", cli.openai);
        assert!(!text.contains("sk-secret-123"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }
}
