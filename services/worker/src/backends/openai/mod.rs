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
//! A reasoning model's thinking comes as
//! [`ModelOutput::Reasoning`](super::ModelOutput::Reasoning), apart
//! from the answer's tokens, in each of the three shapes servers send it
//! (`delta.reasoning_content`, `delta.reasoning`, or `<think>…</think>` at
//! the start of `content`).
//!
//! Failures are sorted for the worker: a 4xx (other than 408 and 429), an
//! `error` object inside the stream, and an event over
//! `--openai-max-event-bytes` are the request's or the server's fault and
//! are not retried ([`BackendError::Rejected`](super::BackendError::Rejected));
//! 429, 5xx, refused
//! connections, timeouts and a stream cut short are passing
//! ([`BackendError::Unavailable`](super::BackendError::Unavailable), with
//! the server's `Retry-After`).

mod answer;
mod sse;
mod think;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use protocol::records::{Turn, TurnStatus};
use reqwest::Url;
use serde::Serialize;

use answer::{Answer, Limits};

use super::{Generation, ModelBackend, OutputStream};

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
    /// Idle timeout, seconds: an attempt with no token (and no data at all)
    /// for this long fails and is tried again. An answer whose tokens keep
    /// flowing is never cut, however long it runs:
    /// `--openai-max-answer-bytes` and `--openai-max-tokens` bound it
    /// instead (0 = no idle timeout).
    #[arg(
        long = "openai-timeout-secs",
        env = "OPENAI_TIMEOUT_SECS",
        default_value_t = 120
    )]
    pub idle_timeout_secs: u64,
    /// How long to wait for the first token, of the answer or of the
    /// model's reasoning, from the start of the request, seconds (0 = the
    /// idle timeout runs from the start instead).
    #[arg(
        long = "openai-first-token-timeout-secs",
        env = "OPENAI_FIRST_TOKEN_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub first_token_timeout_secs: u64,
    /// The longest server-sent line or event accepted, bytes; a longer one
    /// fails the answer with `model_failed` (it is not retried), and is
    /// never held in memory whole.
    #[arg(
        long = "openai-max-event-bytes",
        env = "OPENAI_MAX_EVENT_BYTES",
        default_value_t = 1 << 20
    )]
    pub max_event_bytes: usize,
    /// The longest answer kept, bytes (the model's reasoning is bounded
    /// the same, apart); a longer answer ends there with `finish_reason`
    /// `length`. The default, about 64k tokens, keeps a turn (answer and
    /// question) well within NATS's 1 MiB message limit.
    #[arg(
        long = "openai-max-answer-bytes",
        env = "OPENAI_MAX_ANSWER_BYTES",
        default_value_t = 256 << 10
    )]
    pub max_answer_bytes: usize,
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
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("first_token_timeout_secs", &self.first_token_timeout_secs)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("max_answer_bytes", &self.max_answer_bytes)
            .field("system_prompt", &self.system_prompt)
            .field("context_turns", &self.context_turns)
            .field("context_chars", &self.context_chars)
            .finish()
    }
}

/// How much of the server's error message is passed on to the client.
const ERROR_MESSAGE_LIMIT: usize = 500;
/// A bound below this would refuse ordinary chunks (each carries JSON
/// around its token).
const MIN_EVENT_BYTES: usize = 1024;

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
        anyhow::ensure!(
            args.max_event_bytes >= MIN_EVENT_BYTES,
            "--openai-max-event-bytes must be at least {MIN_EVENT_BYTES}"
        );
        anyhow::ensure!(
            args.max_answer_bytes > 0,
            "--openai-max-answer-bytes must be more than 0"
        );
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
        let limits = Limits {
            first_token: secs(self.args.first_token_timeout_secs),
            idle: secs(self.args.idle_timeout_secs),
            max_event_bytes: self.args.max_event_bytes,
            max_answer_bytes: self.args.max_answer_bytes,
        };
        futures::stream::unfold(Answer::Starting(Box::new(request), limits), Answer::step).boxed()
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
            reasoning_chars: 0,
            user_seq: 0,
            replaces: None,
            extra: Default::default(),
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
