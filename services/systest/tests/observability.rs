//! One trace from a client's `POST /api/chat` to the model's last token,
//! across the work-queue and across a redelivery, received by a real
//! OTLP/gRPC receiver; and `/metrics` counters that move by the right amounts.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use std::time::Duration;

use protocol::Event;
use serde_json::{json, Value};
use stack::otlp::{OtlpReceiver, ReceivedSpan};
use stack::{Stack, StackOptions};
use support::{new_session, wait_for_events};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn otel_env(receiver: &OtlpReceiver) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]
}

fn by_id<'a>(spans: &'a [ReceivedSpan], id: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| s.span_id == id)
}

fn jobs(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.name == "chat.job").collect()
}

/// Asserts `job` descends from a gateway span of the client's trace, and
/// that a model span of the same attempt is its child.
fn assert_linked(spans: &[ReceivedSpan], job: &ReceivedSpan) {
    assert_eq!(
        job.trace_id, TRACE_ID,
        "the job span is in the client's trace"
    );
    assert_eq!(job.service, "worker");
    let parent = by_id(spans, &job.parent_span_id)
        .unwrap_or_else(|| panic!("the job's parent span never arrived: {job:?}\n{spans:#?}"));
    assert_eq!(
        parent.service, "gateway",
        "the job's parent is the gateway's span"
    );
    assert_eq!(parent.trace_id, TRACE_ID);
    let model = spans
        .iter()
        .find(|s| s.name == "chat.model" && s.parent_span_id == job.span_id)
        .unwrap_or_else(|| panic!("no model span under {job:?}"));
    assert_eq!(model.trace_id, TRACE_ID);
    assert_eq!(
        model.attributes.get("attempt"),
        job.attributes.get("attempt")
    );
    for span in [job, model] {
        let text = format!("{:?}", span.attributes);
        assert!(
            !text.contains("What is a trace"),
            "prompt text leaked into {span:?}"
        );
    }
}

#[tokio::test]
async fn one_trace_links_gateway_worker_and_model_also_across_a_redelivery() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mut env = otel_env(&receiver);
    env.extend([
        ("DEMO_TOKENS_PER_SEC".to_string(), "40".to_string()),
        ("DEMO_ANSWER_TOKENS".to_string(), "40".to_string()),
        ("DEMO_FIRST_TOKEN_MS".to_string(), "10".to_string()),
        ("CHAT_ACK_WAIT_MS".to_string(), "1500".to_string()),
    ]);
    let mut stack = Stack::start(StackOptions {
        gateways: 1,
        workers: 1,
        env,
        nginx: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let base = stack.gateway_url(0);
    let http = reqwest::Client::new();
    let session = new_session(&http, &base).await;

    let accepted: Value = http
        .post(format!("{base}/api/chat?session={}", session.id))
        .bearer_auth(&session.token)
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .json(&json!({"content": "What is a trace?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(accepted["seq"].as_u64().is_some(), "{accepted}");

    // Kill the worker once it streams, so the job is redelivered.
    wait_for_events(&http, &base, &session, |e| {
        e.iter().any(|e| matches!(e, Event::Chunk { .. }))
    })
    .await;
    stack.kill_worker(0).unwrap();
    stack.restart_worker(0).await.unwrap();
    let seen = wait_for_events(&http, &base, &session, |e| {
        e.iter().any(|e| matches!(e, Event::Done { .. }))
    })
    .await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Restart { attempt: 2, .. })),
        "the job was redelivered: {seen:?}"
    );

    let spans = receiver
        .wait_for(Duration::from_secs(20), |spans| {
            let jobs = jobs(spans);
            jobs.iter()
                .any(|j| j.attributes.get("attempt").map(String::as_str) == Some("2"))
                && spans.iter().filter(|s| s.name == "chat.model").count() >= 1
        })
        .await
        .unwrap_or_else(|spans| panic!("spans never arrived: {spans:#?}"));
    let gateway_root = spans
        .iter()
        .find(|s| s.service == "gateway" && s.parent_span_id == CLIENT_SPAN)
        .unwrap_or_else(|| panic!("no gateway span honours the client's traceparent: {spans:#?}"));
    assert_eq!(gateway_root.trace_id, TRACE_ID);
    // The killed attempt never exported its span (SIGKILL); the redelivered
    // attempt is a new child of the same gateway span.
    let retry = jobs(&spans)
        .into_iter()
        .find(|j| j.attributes.get("attempt").map(String::as_str) == Some("2"))
        .unwrap();
    assert_linked(&spans, retry);
    assert_eq!(retry.attributes.get("session_id"), Some(&session.id));
    assert_eq!(
        retry.attributes.get("finish_reason").map(String::as_str),
        Some("stop")
    );
    assert!(retry.attributes.get("chunks").is_some_and(|c| c != "0"));
}

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let matches = if labels.is_empty() {
                key == name
            } else {
                key.starts_with(&format!("{name}{{"))
                    && labels.split(',').all(|kv| key.contains(kv))
            };
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[tokio::test]
async fn metrics_move_by_the_right_amounts_for_one_chat() {
    let stack = Stack::start(StackOptions {
        gateways: 1,
        workers: 1,
        env: vec![
            ("DEMO_TOKENS_PER_SEC".into(), "0".into()),
            ("DEMO_ANSWER_TOKENS".into(), "30".into()),
            ("CHUNK_WINDOW_MS".into(), "0".into()),
        ],
        nginx: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let base = stack.gateway_url(0);
    let worker_metrics = format!("{}/metrics", stack.worker_metrics_url(0));
    let gateway_metrics = format!("{base}/metrics");
    let http = reqwest::Client::new();
    let scrape = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let session = new_session(&http, &base).await;

    let (gw_before, wk_before) = (
        scrape(gateway_metrics.clone()).await,
        scrape(worker_metrics.clone()).await,
    );
    let response = http
        .post(format!("{base}/api/chat?session={}", session.id))
        .bearer_auth(&session.token)
        .json(&json!({"content": "count me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let seen = wait_for_events(&http, &base, &session, |e| {
        e.iter().any(|e| matches!(e, Event::Done { .. }))
    })
    .await;
    let chunks = seen
        .iter()
        .filter(|e| matches!(e, Event::Chunk { .. }))
        .count() as f64;
    assert_eq!(chunks, 30.0, "one chunk per token with CHUNK_WINDOW_MS=0");

    // The worker counts after its ack; wait for the counter rather than sleep.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let wk_after = loop {
        let text = scrape(worker_metrics.clone()).await;
        if metric(&text, "chat_worker_jobs_total", "outcome=\"done\"")
            > metric(&wk_before, "chat_worker_jobs_total", "outcome=\"done\"")
            || tokio::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let gw_after = scrape(gateway_metrics).await;
    let delta = |before: &str, after: &str, name: &str, labels: &str| {
        metric(after, name, labels) - metric(before, name, labels)
    };
    assert_eq!(
        delta(
            &wk_before,
            &wk_after,
            "chat_worker_jobs_total",
            "outcome=\"done\""
        ),
        1.0
    );
    assert_eq!(
        delta(
            &wk_before,
            &wk_after,
            "chat_worker_chunks_published_total",
            ""
        ),
        chunks
    );
    assert_eq!(
        delta(
            &wk_before,
            &wk_after,
            "chat_worker_time_to_first_chunk_seconds_count",
            ""
        ),
        1.0
    );
    assert_eq!(
        delta(
            &wk_before,
            &wk_after,
            "chat_worker_tokens_total",
            "backend=\"demo\""
        ),
        30.0
    );
    assert!(delta(&gw_before, &gw_after, "chat_gateway_errors_total", "") == 0.0);
    assert!(
        metric(&gw_after, "chat_gateway_nats_connected", "") >= 1.0,
        "{gw_after}"
    );
}
