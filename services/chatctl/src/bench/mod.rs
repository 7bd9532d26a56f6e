//! `chatctl bench`: the whole system under load, next to the physical limit
//! of the same NATS server, measured in one run and printed as a markdown
//! table (and JSON). See `chatctl bench --help` for every parameter.
//!
//! The bench starts its own stacks through [`stack`] (release
//! binaries from `CHAT_BIN_DIR`): one with the demo model at zero delay for
//! throughput, first-chunk, connection, replay and idle measures, then one
//! with paced streams for token latency (the demo stamps each token with
//! the time it yielded it; the client measures to when the frame carrying
//! it arrived) and chunk latency. With `--url` it attaches to a
//! running stack instead and skips what needs process control.

pub mod comparison;
pub mod cpu;
pub mod idle;
pub mod ledger;
pub mod load;
pub mod model_pacing;
pub mod peer;
pub mod publish_acks;
pub mod raw_nats;
pub mod replay;
pub mod report;
mod run;
pub mod scrape;
pub mod socket;
pub mod sse;
pub mod stats;
pub mod tcp_opens;
pub mod token_trace;
pub mod window;

pub use run::{run, Capacity};

use std::path::PathBuf;

/// How much load: `short` fits in about two minutes on two cores, `full`
/// is the published run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    Short,
    Full,
}

/// A measure that can be run alone with `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Core NATS and JetStream publishing on the same server.
    Raw,
    /// WebSocket connect + ready.
    Connect,
    /// End-to-end chunks/s with many sessions.
    E2e,
    /// Time to first chunk.
    Ttft,
    /// Replay of N events on reconnect.
    Replay,
    /// Idle connections and gateway memory.
    Idle,
    /// End-to-end chunks/s with 1, 2, 3 workers.
    Scaling,
    /// Token and chunk latency with paced streams.
    Paced,
    /// The paced load again through the AI SDK's SSE endpoint, on the same
    /// stack: token latency and CPU per token next to the WebSocket's.
    Sse,
    /// The peer (resumable-stream on Redis) under the e2e, paced and idle
    /// workloads, after our stacks are stopped.
    Peer,
    /// The most paced streams held at token p99 < 250 ms with an exact
    /// ledger, stepping up: ours, then the peer's.
    Capacity,
}

/// `chatctl bench`: every parameter has a flag; unset ones come from the profile.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Profile::Short)]
    pub profile: Profile,
    /// Run only these measures (comma separated); default all.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Phase>,
    /// Attach to a running stack (e.g. `just up`: http://127.0.0.1:8080)
    /// instead of starting one; measures needing process control are skipped.
    #[arg(long)]
    pub url: Option<String>,
    /// NATS of the attached stack, for the raw NATS measures.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The ops nkey (and CA) for the attached stack's NATS (`just up`:
    /// `--nats-nkey-file run/credentials/ops.nk`).
    #[command(flatten)]
    pub nats_access: protocol::access::NatsAccess,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Gateways of the started stacks.
    #[arg(long, default_value_t = 3)]
    pub gateways: usize,
    /// Workers of the started stacks.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Core NATS messages published.
    #[arg(long)]
    pub core_messages: Option<u64>,
    /// JetStream messages published, pipelined.
    #[arg(long)]
    pub js_messages: Option<u64>,
    /// Bytes per raw NATS message.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// JetStream publishes awaiting their ack at once.
    #[arg(long, default_value_t = 4096)]
    pub js_window: usize,
    /// Sessions chatting at once in the throughput run.
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Seconds of load before counting.
    #[arg(long)]
    pub warmup_secs: Option<f64>,
    /// Seconds counted in the throughput run.
    #[arg(long)]
    pub measure_secs: Option<f64>,
    /// Tokens per demo answer.
    #[arg(long, default_value_t = 80)]
    pub answer_tokens: usize,
    /// CHUNK_WINDOW_MS of the zero-delay stack (0 = a chunk per token, the
    /// heaviest case: every token is a stored, replayable event).
    #[arg(long, default_value_t = 0)]
    pub chunk_window_ms: u64,
    /// Sessions in the time-to-first-chunk run, each asking turn after turn
    /// (default 1: a quiet system; the e2e run reports it under full load).
    #[arg(long)]
    pub ttft_sessions: Option<usize>,
    /// Seconds counted in the time-to-first-chunk run.
    #[arg(long)]
    pub ttft_secs: Option<f64>,
    /// Concurrent paced streams, one latency run each (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub paced_loads: Vec<usize>,
    /// Tokens per second of a paced stream.
    #[arg(long, default_value_t = 50.0)]
    pub paced_tokens_per_sec: f64,
    /// CHUNK_WINDOW_MS of the paced stack (default: the workers' default).
    #[arg(long)]
    pub paced_chunk_window_ms: Option<u64>,
    /// CHUNK_WINDOW_MAX_MS of the paced stack: the bound the window grows to
    /// under load (default: the workers' default; at or below the window, a
    /// fixed window, as before the window adapted).
    #[arg(long)]
    pub paced_chunk_window_max_ms: Option<u64>,
    /// Runs the paced loads again on a stack whose window is fixed
    /// (`CHUNK_WINDOW_MAX_MS=0`), as before it adapted: both in one run.
    #[arg(long)]
    pub paced_fixed_window_too: bool,
    /// Seconds counted per paced load.
    #[arg(long)]
    pub paced_secs: Option<f64>,
    /// Paced streams (ours and the peer's) all ask their first question at
    /// once, so every turn of every stream starts together: a burst of
    /// every stream's question each answer's length, instead of streams
    /// whose first questions are spread over one answer's length.
    #[arg(long)]
    pub paced_in_step: bool,
    /// Writes every measured token of each paced run (and each run of the
    /// `sse` comparison) to DIR/<streams>-<side>-<run>.tsv: when it arrived,
    /// its latency, its chunk's place in the answer; the report notes how
    /// much of each run's tail the answers' 2nd to 4th chunks carried.
    #[arg(long, value_name = "DIR")]
    pub token_trace_dir: Option<std::path::PathBuf>,
    /// Pairs of runs, WebSocket and SSE, the `sse` comparison pools at each
    /// paced load, in alternating order (WebSocket, SSE, SSE, WebSocket,
    /// WebSocket, SSE, …), so a drift of the machine during the load weighs
    /// on both sides alike. Three: with two, a single run's drift (one side
    /// 15–20 % off at 100 streams, a p99 at 500 moving by half) still
    /// decided some comparisons.
    #[arg(long, default_value_t = 3)]
    pub sse_pairs: usize,
    /// The `sse` comparison's control: its second side is the WebSocket
    /// again, its client spending this many ns of CPU more per token
    /// received (0: the WebSocket against itself, the comparison's own
    /// noise). What a known extra cost does to the p99 at each load.
    #[arg(long)]
    pub sse_control_ns: Option<u64>,
    /// Paced stream counts the capacity phase steps through, in order,
    /// until one misses (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub capacity_loads: Vec<usize>,
    /// Runs the peer's capacity steps even when `--only` names no `peer`.
    #[arg(long)]
    pub capacity_peer: bool,
    /// Connect + ready samples (new sessions; as many re-attached).
    #[arg(long)]
    pub connect_samples: Option<usize>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 8)]
    pub connect_concurrency: usize,
    /// Events replayed per reconnect.
    #[arg(long, default_value_t = 1000)]
    pub replay_events: usize,
    /// Reconnects timed.
    #[arg(long)]
    pub replay_samples: Option<usize>,
    /// Idle WebSockets held across the gateways.
    #[arg(long)]
    pub idle_connections: Option<usize>,
    /// Handshakes in flight at once while opening idle connections and sessions.
    #[arg(long, default_value_t = 64)]
    pub open_concurrency: usize,
    /// Seconds counted per point of the worker scaling run.
    #[arg(long)]
    pub scaling_secs: Option<f64>,
    /// Sessions whose received events are compared with the stream after a run.
    #[arg(long, default_value_t = 50)]
    pub verify_sessions: usize,
    /// Node processes of the peer behind its one port (node:cluster).
    #[arg(long, default_value_t = 2)]
    pub peer_processes: usize,
    /// Every n-th peer session drops its connection half way through every
    /// answer and resumes it (0 = none).
    #[arg(long, default_value_t = 10)]
    pub peer_resume_every: usize,
    /// The peer's Redis writes an append-only file (fsync every second)
    /// instead of running without persistence.
    #[arg(long)]
    pub peer_redis_appendonly: bool,
}

impl BenchArgs {
    /// Whether `phase` runs.
    pub fn runs(&self, phase: Phase) -> bool {
        self.only.is_empty() || self.only.contains(&phase)
    }
}
