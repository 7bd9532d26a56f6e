//! An OpenAI-compatible backend: `POST {base_url}/v1/chat/completions` with
//! `stream: true`. (Being built: see the issue "Real model backends".)

use std::time::Duration;

use super::{BackendError, Generation, ModelBackend, OutputStream};

/// Flags and environment variables of the `openai` backend.
#[derive(Clone, Debug, clap::Args)]
pub struct OpenAiArgs {
    /// Base URL of the server, without `/v1` (e.g. `http://127.0.0.1:8081`).
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
    /// A file holding the API key.
    #[arg(long = "openai-api-key-file", env = "OPENAI_API_KEY_FILE")]
    pub api_key_file: Option<std::path::PathBuf>,
    #[arg(long = "openai-temperature", env = "OPENAI_TEMPERATURE")]
    pub temperature: Option<f32>,
    #[arg(long = "openai-max-tokens", env = "OPENAI_MAX_TOKENS")]
    pub max_tokens: Option<u32>,
    /// Whole-request timeout, seconds.
    #[arg(
        long = "openai-timeout-secs",
        env = "OPENAI_TIMEOUT_SECS",
        default_value_t = 120
    )]
    pub timeout_secs: u64,
    /// How long to wait for the first token, seconds.
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

pub struct OpenAiBackend {
    args: OpenAiArgs,
}

impl OpenAiBackend {
    pub fn new(args: OpenAiArgs) -> anyhow::Result<Self> {
        Ok(Self { args })
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

    fn generate(&self, _generation: Generation) -> OutputStream {
        let err = BackendError::Unavailable {
            message: "the openai backend is not built yet".into(),
            retry_after: Some(Duration::from_secs(1)),
        };
        Box::pin(futures::stream::once(async move { Err(err) }))
    }
}
