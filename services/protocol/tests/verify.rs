//! The layout belongs to operations (issue 13): `apply` creates or updates
//! it and says what it did; `verify`, what services run at start, only
//! reads it and names every setting that differs from its configuration.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use async_nats::jetstream;
use futures::TryStreamExt;
use protocol::setup::{
    apply, verify, verify_when_ready, Change, LayoutConfig, LayoutError, SETUP_PATIENCE,
};
use stack::nats::NatsServer;

async fn server() -> (NatsServer, jetstream::Context) {
    let server = NatsServer::start().unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    (server, js)
}

/// The message of a verify that must fail.
async fn verify_error(js: &jetstream::Context, config: &LayoutConfig) -> LayoutError {
    match verify(js, config).await {
        Ok(_) => panic!("verify accepted a layout that differs from {config:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_verify_after_apply_with_the_same_config_binds_the_layout() {
    let (_server, js) = server().await;
    let config = LayoutConfig {
        replay_window_secs: 120,
        max_deliver: 2,
        ..Default::default()
    };
    apply(&js, &config).await.unwrap();
    let layout = verify(&js, &config).await.unwrap();
    assert_eq!(
        layout.events.cached_info().config.max_age.as_secs(),
        120,
        "the bound stream is the applied one"
    );
    let mut consumer = protocol::setup::workers_consumer(&layout).await.unwrap();
    assert_eq!(consumer.info().await.unwrap().config.max_deliver, 2);
}

#[tokio::test]
async fn each_differing_setting_is_named_with_both_values_and_its_variable() {
    let (_server, js) = server().await;
    apply(&js, &LayoutConfig::default()).await.unwrap();
    let cases = [
        (
            LayoutConfig {
                replay_window_secs: 60,
                ..Default::default()
            },
            "stream CHAT_EVENTS: max_age is 3600s on the server, 60s here (CHAT_REPLAY_WINDOW_SECS)",
        ),
        (
            LayoutConfig {
                session_ttl_secs: 60,
                ..Default::default()
            },
            "KV bucket chat_sessions: ttl is 604800s on the server, 60s here (CHAT_SESSION_TTL_SECS)",
        ),
        (
            LayoutConfig {
                max_deliver: 7,
                ..Default::default()
            },
            "consumer workers: max_deliver is 4 on the server, 7 here (CHAT_MAX_DELIVER)",
        ),
    ];
    for (config, expected) in cases {
        let error = verify_error(&js, &config).await;
        let LayoutError::Drift(drifts) = &error else {
            panic!("not a drift: {error}");
        };
        assert!(
            drifts.iter().any(|d| d.to_string() == expected),
            "{expected:?} not among {drifts:#?}"
        );
        let message = error.to_string();
        assert!(message.ends_with("run chatctl layout apply"), "{message}");
    }
    // Only the settings that differ: the default layout verifies clean.
    verify(&js, &LayoutConfig::default()).await.unwrap();
}

#[tokio::test]
async fn a_verify_on_an_empty_server_says_what_is_missing_and_creates_nothing() {
    let (_server, js) = server().await;
    let error = verify_error(&js, &LayoutConfig::default()).await;
    let message = error.to_string();
    assert!(matches!(error, LayoutError::Missing(_)), "{message}");
    for part in [
        "stream CHAT_REQUESTS",
        "stream CHAT_EVENTS",
        "stream CHAT_HISTORY",
        "stream CHAT_DEAD",
        "KV bucket chat_sessions",
    ] {
        assert!(message.contains(&format!("{part} is missing")), "{message}");
    }
    assert!(message.contains("run chatctl layout apply"), "{message}");
    let streams: Vec<String> = js.stream_names().try_collect().await.unwrap();
    assert!(streams.is_empty(), "verify created {streams:?}");
}

#[tokio::test]
async fn a_missing_consumer_is_reported_and_not_created() {
    let (_server, js) = server().await;
    let config = LayoutConfig::default();
    let layout = apply(&js, &config).await.unwrap().layout;
    layout
        .requests
        .delete_consumer(protocol::subjects::WORKERS_CONSUMER)
        .await
        .unwrap();
    let error = verify_error(&js, &config).await;
    assert_eq!(
        error.lines(),
        vec!["consumer workers is missing on the server".to_string()]
    );
    let mut requests = layout.requests.clone();
    assert_eq!(requests.info().await.unwrap().state.consumer_count, 0);
}

#[tokio::test]
async fn verify_when_ready_returns_a_drift_at_once_instead_of_waiting() {
    let (_server, js) = server().await;
    apply(&js, &LayoutConfig::default()).await.unwrap();
    let config = LayoutConfig {
        session_ttl_secs: 60,
        ..Default::default()
    };
    // Retrying a drift would take the whole patience and end the same way.
    let result = tokio::time::timeout(
        SETUP_PATIENCE / 2,
        verify_when_ready(&js, &config, SETUP_PATIENCE),
    )
    .await
    .expect("a drift is not retried");
    assert!(matches!(result, Err(LayoutError::Drift(_))));
}

#[tokio::test]
async fn apply_says_what_it_created_updated_or_left_alone() {
    let (_server, js) = server().await;
    let config = LayoutConfig::default();
    let first = apply(&js, &config).await.unwrap();
    assert_eq!(
        first.parts.len(),
        6,
        "four streams, the consumer, the bucket"
    );
    assert!(
        first.parts.iter().all(|p| p.change == Change::Created),
        "{:?}",
        first.parts
    );
    let again = apply(&js, &config).await.unwrap();
    assert!(
        again.parts.iter().all(|p| p.change == Change::Unchanged),
        "{:?}",
        again.parts
    );
    let shorter = LayoutConfig {
        replay_window_secs: 60,
        ..Default::default()
    };
    let changed = apply(&js, &shorter).await.unwrap();
    let lines: Vec<String> = changed.parts.iter().map(ToString::to_string).collect();
    // The dedup window follows the replay window down (it cannot be longer).
    assert!(
        lines.contains(
            &"stream CHAT_EVENTS: updated (max_age 3600s → 60s, duplicate_window 600s → 60s)"
                .to_string()
        ),
        "{lines:#?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.ends_with("unchanged")).count(),
        5,
        "{lines:#?}"
    );
    verify(&js, &shorter).await.unwrap();
}
