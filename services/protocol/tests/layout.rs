//! The layout `protocol::setup::ensure` creates on a real nats-server is
//! idempotent and is exactly what `nats/*.json` describes, so operators can
//! create it with `nats stream add --config` / `nats consumer add --config`.
//!
//! `LayoutConfig::default()` is the flags' defaults (see its `Default`), so
//! these files describe what the binaries build when given no flags.
//! Regenerate the JSON files after changing a default with
//! `UPDATE_NATS_JSON=1 cargo test -p protocol --test layout`.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::path::PathBuf;

use async_nats::jetstream;
use protocol::setup::{ensure, LayoutConfig};
use protocol::subjects;
use serde_json::Value;
use stack::nats::NatsServer;

fn nats_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../nats")
}

/// The parts of a server-reported config that describe the layout, not the
/// server: `_nats.*` metadata carries the server version.
fn normalised(mut config: Value) -> Value {
    if let Some(meta) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| !k.starts_with("_nats"));
        if meta.is_empty() {
            config.as_object_mut().map(|c| c.remove("metadata"));
        }
    }
    config
}

async fn server_configs(js: &jetstream::Context) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for name in [
        subjects::REQUESTS_STREAM,
        subjects::EVENTS_STREAM,
        subjects::HISTORY_STREAM,
        subjects::DEAD_STREAM,
    ] {
        let info = js.get_stream(name).await.unwrap().get_info().await.unwrap();
        out.push((
            format!("streams/{name}.json"),
            normalised(serde_json::to_value(&info.config).unwrap()),
        ));
    }
    let kv_stream = format!("KV_{}", subjects::SESSIONS_BUCKET);
    let info = js
        .get_stream(&kv_stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    out.push((
        format!("streams/{kv_stream}.json"),
        normalised(serde_json::to_value(&info.config).unwrap()),
    ));
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream(subjects::REQUESTS_STREAM)
        .await
        .unwrap()
        .get_consumer(subjects::WORKERS_CONSUMER)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    out.push((
        format!(
            "consumers/{}.{}.json",
            subjects::REQUESTS_STREAM,
            subjects::WORKERS_CONSUMER
        ),
        normalised(serde_json::to_value(&info.config).unwrap()),
    ));
    out
}

#[tokio::test]
async fn setup_is_idempotent_and_matches_the_nats_json_files() {
    let server = NatsServer::start().unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let config = LayoutConfig::default();

    ensure(&js, &config).await.unwrap();
    let first = server_configs(&js).await;
    ensure(&js, &config).await.unwrap();
    let second = server_configs(&js).await;
    assert_eq!(first, second, "a second ensure changed the layout");

    for (file, live) in &first {
        let path = nats_dir().join(file);
        if std::env::var_os("UPDATE_NATS_JSON").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, serde_json::to_string_pretty(live).unwrap() + "\n").unwrap();
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_NATS_JSON=1 writes it)", path.display()));
        let on_disk: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            &on_disk, live,
            "{file} differs from what protocol::setup creates"
        );
    }
}

#[tokio::test]
async fn ensure_updates_a_changed_layout_in_place() {
    let server = NatsServer::start().unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    ensure(&js, &LayoutConfig::default()).await.unwrap();
    let shorter = LayoutConfig {
        replay_window_secs: 60,
        ack_wait_ms: 2_000,
        ..Default::default()
    };
    let layout = ensure(&js, &shorter).await.unwrap();
    let info = layout.events.get_info().await.unwrap();
    assert_eq!(info.config.max_age.as_secs(), 60);
    let mut consumer = protocol::setup::workers_consumer(&layout).await.unwrap();
    assert_eq!(
        consumer.info().await.unwrap().config.ack_wait.as_millis(),
        2_000
    );
}

/// `max_file_store` of a nats-server config file, in bytes (`8GB`, `512MB`).
fn max_file_store(conf: &str) -> Option<i64> {
    let line = conf
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("max_file_store"))?;
    let value = line.split([':', '=']).nth(1)?.trim().to_ascii_uppercase();
    let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
    let unit = match value[digits.len()..].trim() {
        "" | "B" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        "T" | "TB" => 1 << 40,
        other => panic!("unknown unit {other} in {line}"),
    };
    Some(digits.parse::<i64>().ok()? * unit)
}

#[test]
fn every_stream_and_the_bucket_are_bounded_below_the_file_store() {
    let config = LayoutConfig::default();
    let bounds = [
        ("CHAT_REQUESTS", config.requests_stream().max_bytes),
        ("CHAT_EVENTS", config.events_stream().max_bytes),
        ("CHAT_HISTORY", config.history_stream().max_bytes),
        ("CHAT_DEAD", config.dead_stream().max_bytes),
        ("chat_sessions", config.sessions_bucket().max_bytes),
    ];
    for (name, max) in bounds {
        assert!(
            max > 0,
            "{name} has no max_bytes: one client could fill the store"
        );
    }
    let total: i64 = bounds.iter().map(|(_, max)| max).sum();
    let mut confs = vec![nats_dir().join("nats-server.conf")];
    if let Ok(dir) = std::fs::read_dir(nats_dir().join("cluster")) {
        confs.extend(dir.flatten().map(|e| e.path()));
    }
    let mut checked = 0;
    for path in confs {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if let Some(store) = max_file_store(&text) {
            assert!(
                total < store,
                "{}: the layout may hold {total} bytes, the store {store}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 1, "no nats config with max_file_store found");
}
