//! The worker's flags and environment variables (the process contract).

use std::net::SocketAddr;
use std::time::Duration;

use protocol::setup::LayoutConfig;

use crate::backends::openai::OpenAiArgs;
use crate::chunk_window::ChunkWindow;

/// Which model backend answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// The built-in deterministic text generator (no network, no keys).
    Demo,
    /// Any OpenAI-compatible `POST /v1/chat/completions` server.
    Openai,
}

impl BackendKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Demo => "demo",
            BackendKind::Openai => "openai",
        }
    }
}

fn default_node() -> String {
    format!("worker-{}", std::process::id())
}

/// Everything a worker is configured with.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "worker",
    about = "Pulls chat jobs and streams the model's answers"
)]
pub struct WorkerConfig {
    /// NATS server URL, or a comma-separated seed list of cluster nodes.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// This worker's name in logs and metrics.
    #[arg(long, env = "WORKER_NODE", default_value_t = default_node())]
    pub node: String,
    /// Generations this worker runs at once; it pulls only jobs it can start.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
    /// Where `/metrics` and `/health` are served (port 0 = any free port).
    #[arg(long, env = "WORKER_METRICS_LISTEN", default_value = "127.0.0.1:9100")]
    pub metrics_listen: SocketAddr,
    #[arg(long, value_enum, env = "WORKER_BACKEND", default_value_t = BackendKind::Demo)]
    pub backend: BackendKind,
    /// Demo pacing; 0 = no delay at all (benchmarks).
    #[arg(long, env = "DEMO_TOKENS_PER_SEC", default_value_t = 50.0)]
    pub demo_tokens_per_sec: f64,
    /// Demo delay before the first token.
    #[arg(long, env = "DEMO_FIRST_TOKEN_MS", default_value_t = 150)]
    pub demo_first_token_ms: u64,
    /// Tokens in every demo answer.
    #[arg(long, env = "DEMO_ANSWER_TOKENS", default_value_t = 80)]
    pub demo_answer_tokens: usize,
    /// Tokens the demo "thinks" (as `reasoning` events) before every
    /// answer, to try the reasoning display without a reasoning model; 0 = off.
    #[arg(long, env = "DEMO_REASONING_TOKENS", default_value_t = 0)]
    pub demo_reasoning_tokens: usize,
    /// Model names the demo backend answers for, besides `demo` (the same
    /// list the gateways allow, so any model a client may name is served).
    #[arg(long = "models", env = "CHAT_MODELS", value_delimiter = ',')]
    pub demo_models: Vec<String>,
    /// Tokens are coalesced into one chunk for this long while the path to
    /// NATS is quiet (0 = a chunk per token, always).
    #[arg(long, env = "CHUNK_WINDOW_MS", default_value_t = 20)]
    pub chunk_window_ms: u64,
    /// The bound the window grows to when chunks' publish acks slow down
    /// (fewer, larger chunks under load); at or below `CHUNK_WINDOW_MS` the
    /// window is fixed.
    #[arg(long, env = "CHUNK_WINDOW_MAX_MS", default_value_t = 200)]
    pub chunk_window_max_ms: u64,
    /// Under load the window is this many times the chunks' smoothed
    /// publish-ack latency (between `CHUNK_WINDOW_MS` and `CHUNK_WINDOW_MAX_MS`).
    #[arg(long, env = "CHUNK_WINDOW_GAIN", default_value_t = crate::chunk_window::GAIN)]
    pub chunk_window_gain: f64,
    /// Demo tokens carry the time they were yielded (`⟦µs since the
    /// epoch⟧` before each token), so a client can measure each token's
    /// latency. For benchmarks: the text is no longer the plain answer.
    #[arg(long, env = "DEMO_STAMP_TOKENS", default_value_t = false)]
    pub demo_stamp_tokens: bool,
    /// A chunk is flushed when it holds this many bytes; a longer token is
    /// split across chunks.
    #[arg(long, env = "CHUNK_MAX_BYTES", default_value_t = 512)]
    pub chunk_max_bytes: usize,
    /// How long running jobs may finish after SIGTERM before they are handed
    /// back to the queue (fractions allowed).
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE_SECS", default_value_t = 10.0)]
    pub shutdown_grace_secs: f64,
    /// Test hook: each admit step pauses this long before its reads (as
    /// when they wait out a stream's election), to show the job's lease is
    /// kept through every step.
    #[doc(hidden)]
    #[arg(
        long,
        env = "WORKER_TEST_ADMIT_PAUSE_MS",
        default_value_t = 0,
        hide = true
    )]
    pub test_admit_pause_ms: u64,
    /// Test hook: a run taking a message over pauses this long between
    /// reading the message's last claim and storing its own, so a test can
    /// land another run's write in between.
    #[doc(hidden)]
    #[arg(
        long,
        env = "WORKER_TEST_CLAIM_PAUSE_MS",
        default_value_t = 0,
        hide = true
    )]
    pub test_claim_pause_ms: u64,
    #[command(flatten)]
    pub layout: LayoutConfig,
    /// The nkey and CA files this service connects to NATS with.
    #[command(flatten)]
    pub nats_access: protocol::access::NatsAccess,
    #[command(flatten)]
    pub openai: OpenAiArgs,
}

impl WorkerConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::try_from_secs_f64(self.shutdown_grace_secs).unwrap_or(Duration::ZERO)
    }

    pub fn chunk_window(&self) -> ChunkWindow {
        ChunkWindow::new(
            Duration::from_millis(self.chunk_window_ms),
            Duration::from_millis(self.chunk_window_max_ms),
            self.chunk_window_gain,
        )
    }
}
