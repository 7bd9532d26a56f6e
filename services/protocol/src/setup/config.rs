//! What the layout is made of: [`LayoutConfig`], read from the same flags
//! and environment variables by every service and by `chatctl layout`, and
//! the stream, consumer and bucket configurations it gives.

use std::time::Duration;

use async_nats::jetstream::{
    consumer::{pull, AckPolicy, DeliverPolicy},
    kv,
    stream::{self, DiscardPolicy, Republish, RetentionPolicy, StorageType},
};
use clap::{Args, FromArgMatches};

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
    /// The configuration a service reads when it is started with `pairs`
    /// added to this process's environment (the last pair of a name wins).
    /// The test harnesses apply the layout with it before they start
    /// services with those variables, so that what they apply is what the
    /// services verify.
    pub fn from_env_overrides(pairs: &[(String, String)]) -> Result<Self, clap::Error> {
        let command = Self::augment_args(clap::Command::new("layout"));
        let mut args = vec!["layout".to_string()];
        for arg in command.get_arguments() {
            let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            if let Some((_, value)) = pairs.iter().rev().find(|(name, _)| env == name.as_str()) {
                args.push(format!("--{long}={value}"));
            }
        }
        let matches = command.try_get_matches_from(args)?;
        Self::from_arg_matches(&matches)
    }

    /// The environment variable of the field `id` (e.g.
    /// `replay_window_secs` → `CHAT_REPLAY_WINDOW_SECS`), read from the
    /// flag definitions so a drift message names what an operator sets.
    pub fn env_name(id: &str) -> String {
        Self::augment_args(clap::Command::new("layout"))
            .get_arguments()
            .find(|arg| arg.get_id() == id)
            .and_then(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .unwrap_or_else(|| id.to_string())
    }

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
            subjects: vec![subjects::EVENTS_ALL.into(), subjects::CLAIMS_ALL.into()],
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn env_overrides_set_their_fields_and_the_last_pair_wins() {
        let pairs = [
            ("RUST_LOG".to_string(), "info".to_string()),
            ("CHAT_REPLICAS".to_string(), "3".to_string()),
            ("CHAT_SESSION_TTL_SECS".to_string(), "60".to_string()),
            ("CHAT_SESSION_TTL_SECS".to_string(), "90".to_string()),
        ];
        let config = LayoutConfig::from_env_overrides(&pairs).unwrap();
        assert_eq!((config.replicas, config.session_ttl_secs), (3, 90));
        let bad = [("CHAT_MAX_DELIVER".to_string(), "many".to_string())];
        assert!(LayoutConfig::from_env_overrides(&bad).is_err());
    }

    #[test]
    fn env_names_come_from_the_flags() {
        assert_eq!(
            LayoutConfig::env_name("replay_window_secs"),
            "CHAT_REPLAY_WINDOW_SECS"
        );
        assert_eq!(LayoutConfig::env_name("replicas"), "CHAT_REPLICAS");
    }
}
