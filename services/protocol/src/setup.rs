//! The JetStream layout (README.md, "Architecture"; `nats/*.json` is the same
//! layout as files for the `nats` CLI) and the one idempotent
//! function that creates or updates it. Gateways and workers both call
//! [`ensure`] at start, with the same [`LayoutConfig`] read from the same
//! flags and environment variables, so whichever starts first builds it.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    kv,
    stream::{self, DiscardPolicy, Republish, RetentionPolicy, StorageType},
};

use crate::subjects;

/// Everything tunable about the layout. Defaults suit one machine; every
/// value has a flag and an environment variable, and its default is written
/// only in its `default_value_t` (`Default` reads them from there).
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct LayoutConfig {
    /// How long `CHAT_EVENTS` keeps events: the window in which a client can
    /// come back and replay what it missed.
    #[arg(long, env = "CHAT_REPLAY_WINDOW_SECS", default_value_t = 3600)]
    pub replay_window_secs: u64,
    /// Upper bound on `CHAT_EVENTS` size; oldest events go first.
    #[arg(long, env = "CHAT_EVENTS_MAX_BYTES", default_value_t = 1 << 30)]
    pub events_max_bytes: i64,
    /// Upper bound on `CHAT_HISTORY` size; oldest turns go first.
    #[arg(long, env = "CHAT_HISTORY_MAX_BYTES", default_value_t = 2 << 30)]
    pub history_max_bytes: i64,
    /// Upper bound on `CHAT_DEAD` size; oldest letters go first.
    #[arg(long, env = "CHAT_DEAD_MAX_BYTES", default_value_t = 256 << 20)]
    pub dead_max_bytes: i64,
    /// Upper bound on the `chat_sessions` bucket. When it is full a new
    /// session is refused (`internal`) instead of evicting a live one.
    #[arg(long, env = "CHAT_SESSIONS_MAX_BYTES", default_value_t = 1 << 30)]
    pub sessions_max_bytes: i64,
    /// Finished turns `CHAT_HISTORY` keeps per session (the oldest go):
    /// what the `history` frame and `GET /api/history` show at most, and a
    /// bound on every read of a session's turns.
    #[arg(long, env = "CHAT_HISTORY_MAX_TURNS", default_value_t = 1_000)]
    pub history_max_turns: i64,
    /// How long finished turns stay in `CHAT_HISTORY`.
    #[arg(long, env = "CHAT_HISTORY_MAX_AGE_SECS", default_value_t = 7 * 24 * 3600)]
    pub history_max_age_secs: u64,
    /// How long an untouched session lives in `chat_sessions`.
    #[arg(long, env = "CHAT_SESSION_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub session_ttl_secs: u64,
    /// Jobs the work-queue holds before it refuses new ones (`overloaded`).
    #[arg(long, env = "CHAT_QUEUE_MAX_MSGS", default_value_t = 10_000)]
    pub queue_max_msgs: i64,
    /// Bytes the work-queue holds before it refuses new ones.
    #[arg(long, env = "CHAT_QUEUE_MAX_BYTES", default_value_t = 64 << 20)]
    pub queue_max_bytes: i64,
    /// How long a retried send with the same `message_id` is recognised.
    #[arg(long, env = "CHAT_DEDUP_WINDOW_SECS", default_value_t = 600)]
    pub dedup_window_secs: u64,
    /// A job not acked (nor progress-acked) for this long goes to another worker.
    #[arg(long, env = "CHAT_ACK_WAIT_MS", default_value_t = 10_000)]
    pub ack_wait_ms: u64,
    /// Attempts per job before it is dead-lettered.
    #[arg(long, env = "CHAT_MAX_DELIVER", default_value_t = 4)]
    pub max_deliver: i64,
    /// Generations in flight across all workers.
    #[arg(long, env = "CHAT_MAX_ACK_PENDING", default_value_t = 1024)]
    pub max_ack_pending: i64,
    /// Stream replicas (3 on a 3-node cluster).
    #[arg(long, env = "CHAT_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
}

/// The defaults are the flags' `default_value_t`s, read through clap with
/// the environment ignored: written once, so what a binary gets without
/// flags and what tests (and `nats/*.json`) are built from cannot drift.
impl Default for LayoutConfig {
    fn default() -> Self {
        use clap::{Args, FromArgMatches};
        let command =
            Self::augment_args(clap::Command::new("layout-defaults")).mut_args(|arg| arg.env(None));
        command
            .try_get_matches_from(["layout-defaults"])
            .and_then(|matches| Self::from_arg_matches(&matches))
            // Every field has a `default_value_t` of its own type, so an
            // empty command line always parses (the unit tests run this).
            .expect("the layout flags' defaults parse")
    }
}

impl LayoutConfig {
    /// How long an accepted message counts as in flight in its session's
    /// record: exactly the dedup window. A retry of a message the record
    /// holds as in flight is published again, and only JetStream's dedup
    /// keeps that from storing and queueing it twice; an entry older than
    /// the window is moved aside (`SessionRecord::expired`) and its retries
    /// are never published again. One setting, so the two cannot disagree.
    pub fn in_flight_max_age_ms(&self) -> u64 {
        self.dedup_window_secs.saturating_mul(1000)
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms.max(1))
    }

    /// How often a worker tells the server it is still on a job: well inside
    /// `ack_wait`, so a live worker never loses its job.
    pub fn progress_interval(&self) -> Duration {
        self.ack_wait() / 3
    }

    /// Redelivery delays after a missed ack: the first is `ack_wait` (a
    /// killed worker's job comes back within seconds), later ones grow so a
    /// job that kills workers does not spin.
    pub fn backoff(&self) -> Vec<Duration> {
        let attempts = usize::try_from(self.max_deliver.max(1) - 1)
            .unwrap_or(0)
            .min(3);
        (0..attempts).map(|i| self.ack_wait() * (1 << i)).collect()
    }

    pub fn requests_stream(&self) -> stream::Config {
        stream::Config {
            name: subjects::REQUESTS_STREAM.into(),
            description: Some("Chat jobs; one worker acks each".into()),
            subjects: vec![subjects::REQUESTS_ALL.into()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            max_messages: self.queue_max_msgs,
            max_bytes: self.queue_max_bytes,
            discard: DiscardPolicy::New,
            duplicate_window: Duration::from_secs(self.dedup_window_secs),
            num_replicas: self.replicas,
            allow_direct: true,
            ..Default::default()
        }
    }

    pub fn events_stream(&self) -> stream::Config {
        stream::Config {
            name: subjects::EVENTS_STREAM.into(),
            description: Some("Every event of every session: the replay window".into()),
            subjects: vec![subjects::EVENTS_ALL.into()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: Duration::from_secs(self.replay_window_secs),
            max_bytes: self.events_max_bytes,
            discard: DiscardPolicy::Old,
            // The server refuses a duplicate window longer than the stream keeps messages.
            duplicate_window: Duration::from_secs(
                self.dedup_window_secs.min(self.replay_window_secs),
            ),
            num_replicas: self.replicas,
            allow_direct: true,
            republish: Some(Republish {
                source: subjects::LIVE_REPUBLISH_SOURCE.into(),
                destination: subjects::LIVE_REPUBLISH_DESTINATION.into(),
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    pub fn history_stream(&self) -> stream::Config {
        stream::Config {
            name: subjects::HISTORY_STREAM.into(),
            description: Some("One record per finished turn".into()),
            subjects: vec![subjects::HISTORY_ALL.into()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: Duration::from_secs(self.history_max_age_secs),
            max_bytes: self.history_max_bytes,
            max_messages_per_subject: self.history_max_turns,
            discard: DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(
                self.dedup_window_secs.min(self.history_max_age_secs),
            ),
            num_replicas: self.replicas,
            allow_direct: true,
            ..Default::default()
        }
    }

    pub fn dead_stream(&self) -> stream::Config {
        stream::Config {
            name: subjects::DEAD_STREAM.into(),
            description: Some("Jobs that exhausted their deliveries, with the reason".into()),
            subjects: vec![subjects::DEAD_ALL.into()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: Duration::from_secs(self.history_max_age_secs),
            max_bytes: self.dead_max_bytes,
            discard: DiscardPolicy::Old,
            num_replicas: self.replicas,
            allow_direct: true,
            ..Default::default()
        }
    }

    pub fn workers_consumer(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(subjects::WORKERS_CONSUMER.into()),
            description: Some("Every worker pulls chat jobs from here".into()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait(),
            max_deliver: self.max_deliver,
            backoff: self.backoff(),
            max_ack_pending: self.max_ack_pending,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    pub fn sessions_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: subjects::SESSIONS_BUCKET.into(),
            description: "Sessions: token hash, node, messages in flight; cancel flags".into(),
            history: 1,
            max_age: Duration::from_secs(self.session_ttl_secs),
            max_bytes: self.sessions_max_bytes,
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// Why the layout could not be set up: which part, and what NATS said.
#[derive(Debug, thiserror::Error)]
#[error("setting up {part}: {source}")]
pub struct SetupError {
    part: String,
    source: async_nats::Error,
}

fn failed<E: Into<async_nats::Error>>(part: impl Into<String>) -> impl FnOnce(E) -> SetupError {
    let part = part.into();
    move |e| SetupError {
        part,
        source: e.into(),
    }
}

/// The parts of the layout a service works with once it is set up.
#[derive(Clone)]
pub struct Layout {
    pub requests: stream::Stream,
    pub events: stream::Stream,
    pub history: stream::Stream,
    pub dead: stream::Stream,
    pub sessions: kv::Store,
}

/// Creates every stream, the consumer and the KV bucket, or updates them to
/// `config` when they exist. Running it twice gives the same result.
pub async fn ensure(js: &jetstream::Context, config: &LayoutConfig) -> Result<Layout, SetupError> {
    async fn stream(
        js: &jetstream::Context,
        config: stream::Config,
    ) -> Result<stream::Stream, SetupError> {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(failed(format!("stream {name}")))?;
        js.get_stream(&name)
            .await
            .map_err(failed(format!("stream {name}")))
    }

    let requests = stream(js, config.requests_stream()).await?;
    let events = stream(js, config.events_stream()).await?;
    let history = stream(js, config.history_stream()).await?;
    let dead = stream(js, config.dead_stream()).await?;
    requests
        .create_consumer(config.workers_consumer())
        .await
        .map_err(failed(format!("consumer {}", subjects::WORKERS_CONSUMER)))?;
    let sessions = js
        .create_or_update_key_value(config.sessions_bucket())
        .await
        .map_err(failed(format!("KV bucket {}", subjects::SESSIONS_BUCKET)))?;
    Ok(Layout {
        requests,
        events,
        history,
        dead,
        sessions,
    })
}

/// How long [`ensure_when_ready`] waits by default: long enough for a
/// cluster that is still electing its leaders, short enough that a wrong
/// `NATS_URL` is reported while someone is still watching.
pub const SETUP_PATIENCE: Duration = Duration::from_secs(60);
/// The first pause between tries of the layout step; it doubles...
const SETUP_RETRY_FIRST: Duration = Duration::from_millis(100);
/// ...up to this.
const SETUP_RETRY_MAX: Duration = Duration::from_secs(2);

/// What the layout step waits for, in the order it needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// A connection to any server of the seed list.
    Connection,
    /// JetStream answering for the account: on a cluster, a meta leader.
    JetStream,
    /// The streams, consumer and bucket created or updated (each R3 stream
    /// needs a leader elected among its peers).
    Layout,
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Waiting::Connection => "a connection to NATS",
            Waiting::JetStream => "JetStream (on a cluster: its meta leader)",
            Waiting::Layout => "the streams and the bucket (on a cluster: their leaders)",
        })
    }
}

/// [`ensure`], for a service starting next to NATS: waits for the
/// connection, then for JetStream (a cluster that is still forming has no
/// meta leader and times requests out), then retries the layout step with a
/// growing pause while NATS answers "not yet" (time-outs, no responders,
/// no leader), saying each time what it waits for. Gives up after
/// `patience` with the last error; an error that retrying cannot fix (a
/// refused configuration) is returned at once.
pub async fn ensure_when_ready(
    js: &jetstream::Context,
    config: &LayoutConfig,
    patience: Duration,
) -> Result<Layout, SetupError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = SETUP_RETRY_FIRST;
    loop {
        let (waiting, result) = try_once(js, config).await;
        let error = match result {
            Ok(layout) => return Ok(layout),
            Err(e) if waiting != Waiting::Connection && !is_transient(&e) => return Err(e),
            Err(e) => e,
        };
        if tokio::time::Instant::now() + pause > deadline {
            tracing::warn!(waiting = %waiting, error = %error, "NATS was not ready in time");
            return Err(error);
        }
        tracing::info!(
            waiting = %waiting,
            error = %error,
            retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
            "waiting for NATS before setting up the layout"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(SETUP_RETRY_MAX);
    }
}

/// One try of the whole step, with what it got stuck on.
async fn try_once(
    js: &jetstream::Context,
    config: &LayoutConfig,
) -> (Waiting, Result<Layout, SetupError>) {
    if js.client().connection_state() != async_nats::connection::State::Connected {
        let error = SetupError {
            part: "connection".into(),
            source: "not connected yet".into(),
        };
        return (Waiting::Connection, Err(error));
    }
    if let Err(e) = js.query_account().await {
        return (Waiting::JetStream, Err(failed("JetStream account")(e)));
    }
    (Waiting::Layout, ensure(js, config).await)
}

/// Whether NATS said "not yet" rather than "no": a request that timed out
/// or found no responder, or a cluster without a leader for the asset.
fn is_transient(e: &SetupError) -> bool {
    let text = e.source.to_string().to_ascii_lowercase();
    [
        "timed out",
        "timeout",
        "no responders",
        "temporarily unavailable",
        "not enabled",
        "leader",
        "no suitable peers",
        "insufficient resources",
        "not current",
        "disconnected",
        "broken pipe",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Binds to the workers' consumer (after [`ensure`]).
pub async fn workers_consumer(
    layout: &Layout,
) -> Result<jetstream::consumer::Consumer<pull::Config>, SetupError> {
    layout
        .requests
        .get_consumer(subjects::WORKERS_CONSUMER)
        .await
        .map_err(failed(format!("consumer {}", subjects::WORKERS_CONSUMER)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    /// The layout from a command line, the environment ignored.
    fn parse(args: &[&str]) -> LayoutConfig {
        let command =
            LayoutConfig::augment_args(clap::Command::new("chat")).mut_args(|a| a.env(None));
        let matches = command
            .try_get_matches_from(std::iter::once("chat").chain(args.iter().copied()))
            .unwrap();
        LayoutConfig::from_arg_matches(&matches).unwrap()
    }

    #[test]
    fn default_is_the_flags_defaults_and_a_flag_changes_its_field_only() {
        let d = LayoutConfig::default();
        assert_eq!(d, parse(&[]));
        assert_eq!(
            (
                d.replay_window_secs,
                d.dedup_window_secs,
                d.max_deliver,
                d.replicas
            ),
            (3600, 600, 4, 1)
        );
        assert_eq!(
            parse(&["--replay-window-secs", "60", "--replicas", "3"]),
            LayoutConfig {
                replay_window_secs: 60,
                replicas: 3,
                ..LayoutConfig::default()
            }
        );
    }

    #[test]
    fn backoff_starts_at_ack_wait_and_fits_max_deliver() {
        let c = LayoutConfig {
            ack_wait_ms: 2_000,
            max_deliver: 3,
            ..Default::default()
        };
        assert_eq!(
            c.backoff(),
            vec![Duration::from_secs(2), Duration::from_secs(4)]
        );
        assert!(c.progress_interval() < c.ack_wait());
        let one = LayoutConfig {
            max_deliver: 1,
            ..Default::default()
        };
        assert!(one.backoff().is_empty());
    }
}
