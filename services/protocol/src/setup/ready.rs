//! The layout step of a process started next to NATS: it waits for the
//! connection, then for JetStream (a cluster that is still forming has no
//! meta leader and times requests out), then retries the step with a
//! growing pause while NATS answers "not yet" (time-outs, no responders, no
//! leader), saying each time what it waits for. An answer that retrying
//! cannot change (a refused configuration, a layout that differs) is
//! returned at once.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;

use super::{apply, failed, verify, Applied, Layout, LayoutConfig, LayoutError, SetupError};

/// How long the layout step waits by default: long enough for a cluster
/// that is still electing its leaders, short enough that a wrong `NATS_URL`
/// is reported while someone is still watching.
pub const SETUP_PATIENCE: Duration = Duration::from_secs(60);
/// The first pause between tries of the layout step; it doubles...
const SETUP_RETRY_FIRST: Duration = Duration::from_millis(100);
/// ...up to this.
const SETUP_RETRY_MAX: Duration = Duration::from_secs(2);

/// [`apply`] once NATS is ready (operations: `chatctl layout apply`, the
/// test harnesses). Gives up after `patience` with the last error.
pub async fn apply_when_ready(
    js: &jetstream::Context,
    config: &LayoutConfig,
    patience: Duration,
) -> Result<Applied, SetupError> {
    when_ready(js, patience, "setting up the layout", || apply(js, config)).await
}

/// [`apply_when_ready`], for callers that only need the layout.
pub async fn ensure_when_ready(
    js: &jetstream::Context,
    config: &LayoutConfig,
    patience: Duration,
) -> Result<Layout, SetupError> {
    apply_when_ready(js, config, patience)
        .await
        .map(|applied| applied.layout)
}

/// [`verify`] once NATS is ready (a gateway or worker at start). A missing
/// part or a differing setting is returned at once: waiting does not fix it.
pub async fn verify_when_ready(
    js: &jetstream::Context,
    config: &LayoutConfig,
    patience: Duration,
) -> Result<Layout, LayoutError> {
    when_ready(js, patience, "reading the layout", || verify(js, config)).await
}

/// An error of the layout step that says whether trying again may help.
trait Retry: From<SetupError> + std::fmt::Display {
    fn is_transient(&self) -> bool;
}

impl Retry for SetupError {
    /// NATS said "not yet" rather than "no": a request that timed out or
    /// found no responder, or a cluster without a leader for the asset.
    fn is_transient(&self) -> bool {
        let text = self.source.to_string().to_ascii_lowercase();
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
}

impl Retry for LayoutError {
    fn is_transient(&self) -> bool {
        match self {
            LayoutError::Nats(e) => e.is_transient(),
            LayoutError::Missing(_) | LayoutError::Drift(_) => false,
        }
    }
}

/// What the layout step waits for, in the order it needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// A connection to any server of the seed list.
    Connection,
    /// JetStream answering for the account: on a cluster, a meta leader.
    JetStream,
    /// The streams, consumer and bucket (each R3 stream needs a leader
    /// elected among its peers).
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

/// Runs `step` once the connection and JetStream answer, retrying with a
/// growing pause while NATS is not ready; `doing` names the step in logs.
async fn when_ready<T, E: Retry, Step: Future<Output = Result<T, E>>>(
    js: &jetstream::Context,
    patience: Duration,
    doing: &str,
    step: impl Fn() -> Step,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = SETUP_RETRY_FIRST;
    loop {
        let (waiting, result) = match ready(js).await {
            Err((waiting, e)) => (waiting, Err(E::from(e))),
            Ok(()) => (Waiting::Layout, step().await),
        };
        let error = match result {
            Ok(done) => return Ok(done),
            Err(e) if waiting != Waiting::Connection && !e.is_transient() => return Err(e),
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
            "waiting for NATS before {doing}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(SETUP_RETRY_MAX);
    }
}

/// Whether the connection and JetStream answer; if not, which one is missing.
async fn ready(js: &jetstream::Context) -> Result<(), (Waiting, SetupError)> {
    if js.client().connection_state() != async_nats::connection::State::Connected {
        let error = SetupError {
            part: "connection".into(),
            source: "not connected yet".into(),
        };
        return Err((Waiting::Connection, error));
    }
    js.query_account()
        .await
        .map(|_| ())
        .map_err(|e| (Waiting::JetStream, failed("JetStream account")(e)))
}
