//! Reading the layout and comparing it with a [`LayoutConfig`]: what a
//! gateway or worker does at start instead of creating anything. Only the
//! settings the configuration decides are compared; what the server fills
//! in by itself (a default duplicate window, `max_waiting`, metadata) is not.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{self, pull},
    context::GetStreamErrorKind,
    kv,
    stream::{self, Republish},
    ErrorCode,
};

use super::{
    bucket_part, bucket_stream, consumer_part, failed, stream_part, Layout, LayoutConfig,
    SetupError,
};
use crate::subjects;

/// What an operator runs to make the server's layout match the configuration.
const FIX: &str = "run chatctl layout apply";

/// One setting the server holds differently from this process's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// `stream CHAT_EVENTS`, `consumer workers`, `KV bucket chat_sessions`.
    pub part: String,
    pub setting: &'static str,
    /// The server's value, formatted (`3600s`, `unlimited`, `file`).
    pub server: String,
    /// The configured value, formatted the same way.
    pub here: String,
    /// The environment variables that decide it (each has a flag); empty
    /// when no flag does (it is fixed by this version's layout).
    pub set_by: Vec<String>,
}

impl Drift {
    /// `max_age 3600s → 60s`: the change `chatctl layout apply` makes.
    pub fn change(&self) -> String {
        format!("{} {} → {}", self.setting, self.server, self.here)
    }

    fn source(&self) -> String {
        if self.set_by.is_empty() {
            "fixed in this version's layout".into()
        } else {
            self.set_by.join(", ")
        }
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} is {} on the server, {} here ({})",
            self.part,
            self.setting,
            self.server,
            self.here,
            self.source()
        )
    }
}

/// Why the layout on the server is not the one this process is configured
/// for, or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Streams, the consumer or the bucket do not exist.
    #[error("{}; {FIX}", missing_lines(.0).join("; "))]
    Missing(Vec<String>),
    /// Every part exists, some with other settings.
    #[error("{}; {FIX}", drift_lines(.0).join("; "))]
    Drift(Vec<Drift>),
    /// NATS did not answer as needed (retried while it says "not yet").
    #[error(transparent)]
    Nats(#[from] SetupError),
}

impl LayoutError {
    /// One line per missing part or differing setting (what `chatctl
    /// layout check` prints).
    pub fn lines(&self) -> Vec<String> {
        match self {
            LayoutError::Missing(parts) => missing_lines(parts),
            LayoutError::Drift(drifts) => drift_lines(drifts),
            LayoutError::Nats(e) => vec![e.to_string()],
        }
    }
}

fn missing_lines(parts: &[String]) -> Vec<String> {
    parts
        .iter()
        .map(|part| format!("{part} is missing on the server"))
        .collect()
}

fn drift_lines(drifts: &[Drift]) -> Vec<String> {
    drifts.iter().map(Drift::to_string).collect()
}

/// Reads every stream, the consumer and the bucket (info requests only:
/// nothing is created or changed) and compares them with `config`. Returns
/// the bound [`Layout`] when they match; every missing part, or else every
/// differing setting, otherwise.
pub async fn verify(js: &jetstream::Context, config: &LayoutConfig) -> Result<Layout, LayoutError> {
    let mut missing = Vec::new();
    let mut drifts = Vec::new();
    let mut found = Vec::new();
    for expected in [
        config.requests_stream(),
        config.events_stream(),
        config.history_stream(),
        config.dead_stream(),
    ] {
        match read_stream(js, &expected.name).await? {
            None => missing.push(stream_part(&expected.name)),
            Some(stream) => {
                drifts.extend(stream_drift(&stream.cached_info().config, &expected));
                found.push(stream);
            }
        }
    }
    match read_stream(js, &bucket_stream()).await? {
        None => missing.push(bucket_part()),
        Some(stream) => drifts.extend(bucket_drift(
            &stream.cached_info().config,
            &config.sessions_bucket(),
        )),
    }
    let [requests, events, history, dead]: [stream::Stream; 4] = match found.try_into() {
        Ok(streams) => streams,
        // The consumer lives in the requests stream: not checked without it.
        Err(_) => return Err(LayoutError::Missing(missing)),
    };
    match read_consumer(&requests).await? {
        None => missing.push(consumer_part()),
        Some(info) => drifts.extend(consumer_drift(&info.config, &config.workers_consumer())),
    }
    if !missing.is_empty() {
        return Err(LayoutError::Missing(missing));
    }
    if !drifts.is_empty() {
        return Err(LayoutError::Drift(drifts));
    }
    let sessions = js
        .get_key_value(subjects::SESSIONS_BUCKET)
        .await
        .map_err(failed(bucket_part()))?;
    Ok(Layout {
        requests,
        events,
        history,
        dead,
        sessions,
    })
}

/// The stream `name`, or `None` when the server has no such stream.
pub(super) async fn read_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Stream>, SetupError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            _ => Err(failed(stream_part(name))(e)),
        },
    }
}

/// The workers' consumer, or `None` when the server has none.
pub(super) async fn read_consumer(
    requests: &stream::Stream,
) -> Result<Option<consumer::Info>, SetupError> {
    match requests.consumer_info(subjects::WORKERS_CONSUMER).await {
        Ok(info) => Ok(Some(info)),
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => Ok(None),
        Err(e) => Err(failed(consumer_part())(e)),
    }
}

/// Collects the differing settings of one part.
struct Comparison {
    part: String,
    set_by: fn(&str) -> &'static [&'static str],
    drifts: Vec<Drift>,
}

impl Comparison {
    fn new(part: String, set_by: fn(&str) -> &'static [&'static str]) -> Self {
        Self {
            part,
            set_by,
            drifts: Vec::new(),
        }
    }

    fn setting(&mut self, setting: &'static str, server: String, here: String) {
        if server != here {
            self.drifts.push(Drift {
                part: self.part.clone(),
                setting,
                server,
                here,
                set_by: (self.set_by)(setting)
                    .iter()
                    .map(|id| LayoutConfig::env_name(id))
                    .collect(),
            });
        }
    }
}

/// The settings of a stream `config` decides, against the server's.
pub(super) fn stream_drift(server: &stream::Config, here: &stream::Config) -> Vec<Drift> {
    let set_by = match here.name.as_str() {
        subjects::REQUESTS_STREAM => requests_set_by,
        subjects::EVENTS_STREAM => events_set_by,
        subjects::HISTORY_STREAM => history_set_by,
        _ => dead_set_by,
    };
    let mut c = Comparison::new(stream_part(&here.name), set_by);
    c.setting(
        "subjects",
        server.subjects.join(", "),
        here.subjects.join(", "),
    );
    c.setting(
        "retention",
        named(&server.retention),
        named(&here.retention),
    );
    c.setting("storage", named(&server.storage), named(&here.storage));
    c.setting("max_age", age(server.max_age), age(here.max_age));
    c.setting("max_bytes", limit(server.max_bytes), limit(here.max_bytes));
    c.setting(
        "max_messages",
        limit(server.max_messages),
        limit(here.max_messages),
    );
    c.setting(
        "max_messages_per_subject",
        limit(server.max_messages_per_subject),
        limit(here.max_messages_per_subject),
    );
    c.setting("discard", named(&server.discard), named(&here.discard));
    // Zero asks for the server's default window, which the server fills in.
    if !here.duplicate_window.is_zero() {
        c.setting(
            "duplicate_window",
            duration(server.duplicate_window),
            duration(here.duplicate_window),
        );
    }
    c.setting(
        "num_replicas",
        server.num_replicas.to_string(),
        here.num_replicas.to_string(),
    );
    c.setting(
        "allow_direct",
        server.allow_direct.to_string(),
        here.allow_direct.to_string(),
    );
    c.setting(
        "republish",
        republish(server.republish.as_ref()),
        republish(here.republish.as_ref()),
    );
    c.drifts
}

/// The settings of the workers' consumer `config` decides, against the server's.
pub(super) fn consumer_drift(server: &consumer::Config, here: &pull::Config) -> Vec<Drift> {
    let mut c = Comparison::new(consumer_part(), consumer_set_by);
    c.setting(
        "ack_policy",
        named(&server.ack_policy),
        named(&here.ack_policy),
    );
    c.setting(
        "deliver_policy",
        named(&server.deliver_policy),
        named(&here.deliver_policy),
    );
    c.setting(
        "ack_wait",
        duration(server.ack_wait),
        duration(here.ack_wait),
    );
    c.setting(
        "max_deliver",
        limit(server.max_deliver),
        limit(here.max_deliver),
    );
    c.setting(
        "backoff",
        durations(&server.backoff),
        durations(&here.backoff),
    );
    // Zero asks for the server's default, which the server fills in.
    if here.max_ack_pending != 0 {
        c.setting(
            "max_ack_pending",
            limit(server.max_ack_pending),
            limit(here.max_ack_pending),
        );
    }
    c.drifts
}

/// The bucket's settings, against its stream (`KV_chat_sessions`) on the server.
pub(super) fn bucket_drift(server: &stream::Config, here: &kv::Config) -> Vec<Drift> {
    let mut c = Comparison::new(bucket_part(), bucket_set_by);
    c.setting(
        "history",
        limit(server.max_messages_per_subject),
        limit(here.history),
    );
    c.setting("ttl", age(server.max_age), age(here.max_age));
    c.setting("max_bytes", limit(server.max_bytes), limit(here.max_bytes));
    c.setting("storage", named(&server.storage), named(&here.storage));
    c.setting(
        "replicas",
        server.num_replicas.to_string(),
        here.num_replicas.to_string(),
    );
    c.drifts
}

// Which `LayoutConfig` fields (by id) decide each setting of each part.

fn requests_set_by(setting: &str) -> &'static [&'static str] {
    match setting {
        "max_messages" => &["queue_max_msgs"],
        "max_bytes" => &["queue_max_bytes"],
        "duplicate_window" => &["dedup_window_secs"],
        "num_replicas" => &["replicas"],
        _ => &[],
    }
}

fn events_set_by(setting: &str) -> &'static [&'static str] {
    match setting {
        "max_age" => &["replay_window_secs"],
        "max_bytes" => &["events_max_bytes"],
        "duplicate_window" => &["dedup_window_secs", "replay_window_secs"],
        "num_replicas" => &["replicas"],
        _ => &[],
    }
}

fn history_set_by(setting: &str) -> &'static [&'static str] {
    match setting {
        "max_age" => &["history_max_age_secs"],
        "max_bytes" => &["history_max_bytes"],
        "max_messages_per_subject" => &["history_max_turns"],
        "duplicate_window" => &["dedup_window_secs", "history_max_age_secs"],
        "num_replicas" => &["replicas"],
        _ => &[],
    }
}

fn dead_set_by(setting: &str) -> &'static [&'static str] {
    match setting {
        "max_age" => &["history_max_age_secs"],
        "max_bytes" => &["dead_max_bytes"],
        "num_replicas" => &["replicas"],
        _ => &[],
    }
}

fn consumer_set_by(setting: &str) -> &'static [&'static str] {
    match setting {
        "ack_wait" => &["ack_wait_ms"],
        "max_deliver" => &["max_deliver"],
        "backoff" => &["ack_wait_ms", "max_deliver"],
        "max_ack_pending" => &["max_ack_pending"],
        _ => &[],
    }
}

fn bucket_set_by(setting: &str) -> &'static [&'static str] {
    match setting {
        "ttl" => &["session_ttl_secs"],
        "max_bytes" => &["sessions_max_bytes"],
        "replicas" => &["replicas"],
        _ => &[],
    }
}

// Values as the messages show them; equal strings mean equal settings.

/// A count or size limit; zero and negative both mean none.
fn limit(value: i64) -> String {
    if value <= 0 {
        "unlimited".into()
    } else {
        value.to_string()
    }
}

/// A maximum age; zero means none.
fn age(value: Duration) -> String {
    if value.is_zero() {
        "unlimited".into()
    } else {
        duration(value)
    }
}

fn duration(value: Duration) -> String {
    if value.subsec_nanos() == 0 {
        format!("{}s", value.as_secs())
    } else {
        format!("{}ms", value.as_millis())
    }
}

fn durations(values: &[Duration]) -> String {
    if values.is_empty() {
        return "none".into();
    }
    let list: Vec<String> = values.iter().copied().map(duration).collect();
    format!("[{}]", list.join(", "))
}

/// A policy by the name NATS gives it (`workqueue`, `file`, `explicit`).
fn named<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

fn republish(value: Option<&Republish>) -> String {
    match value {
        None => "none".into(),
        Some(r) if r.headers_only => format!("{} → {} (headers only)", r.source, r.destination),
        Some(r) => format!("{} → {}", r.source, r.destination),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_replay_window_is_one_drift_naming_its_variable() {
        let configured = LayoutConfig {
            replay_window_secs: 60,
            dedup_window_secs: 30,
            ..Default::default()
        };
        let on_server = LayoutConfig {
            dedup_window_secs: 30,
            ..Default::default()
        };
        let drifts = stream_drift(&on_server.events_stream(), &configured.events_stream());
        assert_eq!(drifts.len(), 1, "{drifts:?}");
        assert_eq!(
            drifts[0].to_string(),
            "stream CHAT_EVENTS: max_age is 3600s on the server, 60s here (CHAT_REPLAY_WINDOW_SECS)"
        );
    }

    #[test]
    fn equal_configs_do_not_drift_and_zero_limits_read_as_unlimited() {
        let config = LayoutConfig::default();
        for expected in [config.requests_stream(), config.dead_stream()] {
            // The server reports a limit left at zero as -1.
            let mut server = expected.clone();
            for limit in [
                &mut server.max_messages,
                &mut server.max_messages_per_subject,
            ] {
                if *limit == 0 {
                    *limit = -1;
                }
            }
            assert!(stream_drift(&server, &expected).is_empty());
        }
    }
}
