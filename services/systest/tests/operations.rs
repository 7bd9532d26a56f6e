//! The operator files name only metrics a running stack exports: the
//! Grafana dashboard (`ops/grafana/*.json`) and the Prometheus alert rules
//! (`ops/prometheus/alerts.yml`).

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use stack::{Stack, StackOptions};
use support::new_session;

fn ops_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../ops")
}

/// Every `chat_*` metric name in a text, without the histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("chat_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_string());
        }
        i = end;
    }
    names
}

#[test]
fn metric_names_are_found_in_texts() {
    let names = metric_names("sum(rate(chat_a_total[5m])) / x_chat_b + chat_c_seconds_bucket");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["chat_a_total", "chat_c_seconds"]
    );
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_metrics_the_stack_exports() {
    let mut wanted = BTreeSet::new();
    for file in ["grafana/chat-backend.json", "prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(ops_dir().join(file)).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 5, "{file} names too few metrics: {names:?}");
        wanted.extend(names);
    }

    let stack = Stack::start(StackOptions {
        gateways: 1,
        workers: 1,
        env: vec![("DEMO_TOKENS_PER_SEC".into(), "0".into())],
        nginx: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let base = stack.gateway_url(0);
    let http = reqwest::Client::new();
    // One chat (plus a refused frame) so labelled counters exist.
    let session = new_session(&http, &base).await;
    let (id, token) = (session.id.as_str(), session.token.as_str());
    let url = format!("{base}/api/chat?session={id}");
    let status = http
        .post(&url)
        .bearer_auth(token)
        .json(&json!({"content": "hi"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    let refused = http
        .post(&url)
        .bearer_auth("wrong")
        .json(&json!({"content": "hi"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(refused, 401);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let missing = loop {
        let mut exported = String::new();
        for url in [
            format!("{base}/metrics"),
            format!("{}/metrics", stack.worker_metrics_url(0)),
        ] {
            exported.push_str(&http.get(url).send().await.unwrap().text().await.unwrap());
        }
        let have = metric_names(&exported);
        let missing: Vec<_> = wanted
            .iter()
            .filter(|n| !have.contains(*n))
            .cloned()
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        missing.is_empty(),
        "the ops files use metrics nobody exports: {missing:?}"
    );
}
