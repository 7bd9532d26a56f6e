//! The gateway's flags, each with an environment variable (the process
//! contract: the harness, the justfile and the tests rely on these names).

use std::net::SocketAddr;
use std::time::Duration;

use protocol::setup::LayoutConfig;

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "gateway",
    about = "WebSocket and REST gateway of the chat backend"
)]
pub struct GatewayConfig {
    /// NATS server URL, or a comma-separated seed list of cluster nodes.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// This node's name, shown to clients in `ready` (default `gateway-<pid>`).
    #[arg(long, env = "GATEWAY_NODE")]
    pub node: Option<String>,
    /// Models a chat may name (comma separated); a chat naming no model gets
    /// the workers' default.
    #[arg(long, env = "CHAT_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Messages in flight per session; one more gets `rate_limited`.
    #[arg(long, env = "CHAT_MAX_IN_FLIGHT_PER_SESSION", default_value_t = 2)]
    pub max_in_flight_per_session: usize,
    /// Longest prompt, in bytes; longer gets `too_large`.
    #[arg(long, env = "CHAT_MAX_PROMPT_BYTES", default_value_t = 32 * 1024)]
    pub max_prompt_bytes: usize,
    /// Largest WebSocket message or frame; larger closes the socket with 1009.
    #[arg(long, env = "GATEWAY_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Largest REST body; larger gets 413.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Largest body of the AI SDK's `POST /api/ui/chat`; larger gets 413. A
    /// stock client posts the whole conversation with every question, and
    /// only its last user message is read (that one within
    /// CHAT_MAX_PROMPT_BYTES), so this bounds how long a chat can grow.
    #[arg(long, env = "GATEWAY_UI_CHAT_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub ui_chat_max_body_bytes: usize,
    /// Sustained frames per second one connection may send.
    #[arg(long, env = "GATEWAY_FRAMES_PER_SEC", default_value_t = 20.0)]
    pub frames_per_sec: f64,
    /// Frames one connection may send in a burst.
    #[arg(long, env = "GATEWAY_FRAME_BURST", default_value_t = 40.0)]
    pub frame_burst: f64,
    /// Recent live events a session keeps for its sockets on this gateway:
    /// one that falls behind the fan-out takes what it missed from here, and
    /// only from the stream beyond it; a slow client never slows its
    /// session's other sockets. Grows with use only, so idle sessions cost
    /// nothing. Deprecated names, still read: --outbound-queue and
    /// GATEWAY_OUTBOUND_QUEUE.
    #[arg(
        long,
        alias = "outbound-queue",
        env = recent_events_env(),
        default_value_t = 256
    )]
    pub recent_events: usize,
    /// Sites (`scheme://host[:port]`) whose pages may open `/ws/chat` besides
    /// the gateway's own origin (the `Host` a handshake came to). A
    /// handshake without `Origin` (not a browser) is always let through.
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Sites (`scheme://host[:port]`) whose pages may call the AI SDK
    /// endpoints (`/api/ui/chat…`) and `POST /api/sessions` from another
    /// origin: CORS, off when
    /// empty (an app served by the same Nginx needs none).
    #[arg(long, env = "GATEWAY_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Accept a session's token in the WebSocket URL (`?token=`), for old
    /// clients. Off: the token comes in the first frame, `auth`, because
    /// URLs end up in logs, proxies and browser history.
    #[arg(long, env = "GATEWAY_ALLOW_URL_TOKEN", default_value_t = false)]
    pub allow_url_token: bool,
    /// How long a socket opened with `?session=` has to send its `auth` frame.
    #[arg(long, env = "GATEWAY_AUTH_TIMEOUT_MS", default_value_t = 5_000)]
    pub auth_timeout_ms: u64,
    /// Sockets one session may have open on this gateway; one more is
    /// refused (`rate_limited`, close 1013).
    #[arg(long, env = "GATEWAY_MAX_SOCKETS_PER_SESSION", default_value_t = 16)]
    pub max_sockets_per_session: usize,
    /// Longest one write to a socket may block before it is closed as too slow.
    #[arg(long, env = "GATEWAY_WRITE_TIMEOUT_MS", default_value_t = 5_000)]
    pub write_timeout_ms: u64,
    /// After a socket's live events go quiet for this long, the session's
    /// last stored sequence is checked once: a lost live message that was
    /// the last of an answer has no successor to reveal the gap.
    #[arg(long, env = "GATEWAY_TAIL_CHECK_MS", default_value_t = 500)]
    pub tail_check_ms: u64,
    /// How long a graceful shutdown waits for sockets and requests.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE_SECS", default_value_t = 10.0)]
    pub shutdown_grace_secs: f64,
    /// Test hook: drop every n-th live message before it reaches sockets, so
    /// tests can show that gaps are repaired from the stream. 0 = never.
    #[doc(hidden)]
    #[arg(
        long,
        env = "GATEWAY_TEST_DROP_LIVE_EVERY",
        default_value_t = 0,
        hide = true
    )]
    pub test_drop_live_every: u64,
    /// Test hook: the first n jobs the work-queue stores are reported as if
    /// their publish ack was lost (a time-out), so tests can show that a
    /// job whose outcome is unknown is neither refused nor queued twice.
    #[doc(hidden)]
    #[arg(
        long,
        env = "GATEWAY_TEST_LOSE_JOB_ACKS",
        default_value_t = 0,
        hide = true
    )]
    pub test_lose_job_acks: u64,
    /// Test hook: the first n NATS requests the gateway would ask again on
    /// a new connection are carried out and then lose their reply: the
    /// connection is dropped before it is read (as a nats-server restart
    /// can do).
    #[doc(hidden)]
    #[arg(
        long,
        env = "GATEWAY_TEST_LOSE_NATS_REPLIES",
        default_value_t = 0,
        hide = true
    )]
    pub test_lose_nats_replies: u64,
    /// Test hook: after a job publish whose ack was lost, the next n tries
    /// of that job find no stream leader (as while a cluster elects one)
    /// and are not sent.
    #[arg(
        long,
        env = "GATEWAY_TEST_LEADERLESS_JOB_RETRIES",
        default_value_t = 0,
        hide = true
    )]
    pub test_leaderless_job_retries: u64,
    /// Test hook: the first n replays (an attach or `resume` with
    /// `after_seq`, …) read the session's last event one short, as a
    /// replica that has not caught up answers (right after a heal,
    /// nats-server serves direct gets again once a replica holds 90 % of
    /// its log).
    #[arg(
        long,
        env = "GATEWAY_TEST_STALE_REPLAY_READS",
        default_value_t = 0,
        hide = true
    )]
    pub test_stale_replay_reads: u64,
    /// Who a client is: its session's token, or the app's JWT.
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub layout: LayoutConfig,
    /// The nkey and CA files this service connects to NATS with.
    #[command(flatten)]
    pub nats_access: protocol::access::NatsAccess,
}

/// How clients prove who they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Anonymous sessions: each opened by the token it was created with.
    #[default]
    Session,
    /// The app's own login: every call carries its JWT, and sessions
    /// belong to the token's `sub`.
    Jwt,
}

/// `GATEWAY_AUTH` and what `jwt` mode needs (README, "Bring your own login").
#[derive(Clone, Debug, clap::Args)]
pub struct AuthConfig {
    /// `session` (anonymous sessions, the default) or `jwt`.
    #[arg(long = "auth", env = "GATEWAY_AUTH", value_enum, default_value_t = AuthMode::Session)]
    pub mode: AuthMode,
    /// jwt: a file holding the HMAC secret of HS256/384/512 tokens.
    #[arg(long, env = "GATEWAY_JWT_HMAC_SECRET_FILE")]
    pub jwt_hmac_secret_file: Option<std::path::PathBuf>,
    /// jwt: a JWKS file of public keys (RS256/384/512, ES256/384, EdDSA).
    #[arg(long, env = "GATEWAY_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<std::path::PathBuf>,
    /// jwt: a JWKS URL, fetched at start and again on an unknown `kid` (at
    /// most once a minute).
    #[arg(long, env = "GATEWAY_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// jwt: the shortest time between two reads of the JWKS on an unknown
    /// `kid` (seconds); the read at start counts.
    #[arg(long, env = "GATEWAY_JWT_JWKS_REFETCH_SECS", default_value_t = 60)]
    pub jwt_jwks_refetch_secs: u64,
    /// jwt: the `iss` every token must carry (unchecked when unset).
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// jwt: the `aud` every token must name (unchecked when unset).
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// jwt: clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "GATEWAY_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,
    /// jwt: how long before its token expires a socket gets `token_expiring`.
    #[arg(long, env = "GATEWAY_TOKEN_EXPIRING_MS", default_value_t = 30_000)]
    pub token_expiring_ms: u64,
    /// jwt: answers in flight per user, across all of the user's sessions
    /// and every gateway; one more gets `rate_limited`.
    #[arg(long, env = "CHAT_USER_MAX_IN_FLIGHT", default_value_t = 4)]
    pub user_max_in_flight: usize,
    /// jwt: sessions one user may have; one more gets `rate_limited`.
    #[arg(long, env = "CHAT_USER_MAX_SESSIONS", default_value_t = 500)]
    pub user_max_sessions: usize,
    /// jwt: sessions one user may create per minute.
    #[arg(long, env = "CHAT_USER_SESSIONS_PER_MINUTE", default_value_t = 20)]
    pub user_sessions_per_minute: usize,
}

/// The variable `--recent-events` is read from: `GATEWAY_RECENT_EVENTS`, or
/// the deprecated `GATEWAY_OUTBOUND_QUEUE` when only that one is set (so
/// deployments that set it keep their value until they rename it).
fn recent_events_env() -> &'static str {
    const CURRENT: &str = "GATEWAY_RECENT_EVENTS";
    const DEPRECATED: &str = "GATEWAY_OUTBOUND_QUEUE";
    if std::env::var_os(CURRENT).is_none() && std::env::var_os(DEPRECATED).is_some() {
        DEPRECATED
    } else {
        CURRENT
    }
}

impl GatewayConfig {
    pub fn node(&self) -> String {
        self.node
            .clone()
            .unwrap_or_else(|| format!("gateway-{}", std::process::id()))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::try_from_secs_f64(self.shutdown_grace_secs).unwrap_or(Duration::ZERO)
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms.max(1))
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms.max(1))
    }

    pub fn tail_check(&self) -> Duration {
        Duration::from_millis(self.tail_check_ms.max(10))
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn recent_events(args: &[&str]) -> usize {
        let args = std::iter::once("gateway").chain(args.iter().copied());
        GatewayConfig::try_parse_from(args).unwrap().recent_events
    }

    /// One test for every source of the value: the process environment is
    /// shared by the tests of this binary, so they must not run in parallel.
    #[test]
    fn recent_events_is_read_under_its_name_and_its_deprecated_ones() {
        std::env::remove_var("GATEWAY_RECENT_EVENTS");
        std::env::remove_var("GATEWAY_OUTBOUND_QUEUE");
        assert_eq!(recent_events(&[]), 256);
        assert_eq!(recent_events(&["--recent-events", "9"]), 9);
        assert_eq!(recent_events(&["--outbound-queue", "8"]), 8);

        std::env::set_var("GATEWAY_OUTBOUND_QUEUE", "7");
        assert_eq!(recent_events(&[]), 7, "the deprecated variable alone");
        assert_eq!(recent_events(&["--recent-events", "9"]), 9, "a flag wins");
        std::env::set_var("GATEWAY_RECENT_EVENTS", "6");
        assert_eq!(recent_events(&[]), 6, "the new variable wins over the old");
        std::env::remove_var("GATEWAY_OUTBOUND_QUEUE");
        assert_eq!(recent_events(&[]), 6, "the new variable alone");
        std::env::remove_var("GATEWAY_RECENT_EVENTS");

        std::env::set_var("GATEWAY_OUTBOUND_QUEUE", "many");
        assert!(
            GatewayConfig::try_parse_from(["gateway"]).is_err(),
            "a bad deprecated value is refused, not ignored"
        );
        std::env::remove_var("GATEWAY_OUTBOUND_QUEUE");

        let help = GatewayConfig::command().render_long_help().to_string();
        assert!(help.contains("--recent-events"), "{help}");
        assert!(
            help.contains(
                "Deprecated names, still read: --outbound-queue and GATEWAY_OUTBOUND_QUEUE"
            ),
            "{help}"
        );
    }
}
