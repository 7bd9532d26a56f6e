//! The single nats-server's JetStream store runs out of space while an
//! answer streams: a new question gets `503 internal` with `Retry-After`
//! (not a hang, nothing half-stored), the answer in flight ends cleanly,
//! and once the ballast is freed (and the server restarted, as a supervisor
//! watching `/healthz` would, when a stream hit the write error) questions
//! are answered again. Every event either client saw equals the stream.
//!
//! Needs root (the store is a tmpfs of its own); skipped otherwise.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use std::time::Duration;

use chatctl::client::Api;
use chatctl::verify::{self, ExpectedAnswer};
use protocol::{MessageId, SessionId};
use stack::{Stack, StackOptions};
use tokio::time::Instant;

/// Tokens per answer: long enough that the fill lands mid-answer.
const TOKENS: usize = 150;
/// At most this many questions are sent while the store is full.
const PROBES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_new_questions_clearly_and_recovers() {
    if !stack::disk::small_disks_available() {
        eprintln!("skipped: a store of its own needs root (mount -t tmpfs)");
        return;
    }
    let mut stack = Stack::start(StackOptions {
        gateways: 1,
        workers: 1,
        nginx: false,
        store_bytes: Some(64 << 20),
        env: vec![
            ("RUST_LOG".into(), "warn".into()),
            ("DEMO_FIRST_TOKEN_MS".into(), "50".into()),
            ("DEMO_TOKENS_PER_SEC".into(), "50".into()),
            ("DEMO_ANSWER_TOKENS".into(), TOKENS.to_string()),
            ("CHAT_ACK_WAIT_MS".into(), "2000".into()),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let base = stack.nginx_url();
    let deadline = Instant::now() + Duration::from_secs(120);

    let mut streaming = support::client(&base).await;
    let mut progress = streaming.progress();
    let asking = tokio::spawn(async move {
        let asked = streaming.ask("a long answer, please", deadline).await;
        (streaming, asked)
    });
    support::wait_for(&mut progress, "the first chunks", |p| p.chunks >= 5).await;
    let mut asker = support::client(&base).await;
    // One session per question asked while full: each may be in flight
    // until space returns, and a session takes only so many at once.
    let api = Api::new(&base);
    let mut probes = Vec::new();
    for _ in 0..PROBES {
        probes.push(api.create_session().await.unwrap());
    }

    let ballast = stack.nats().unwrap().disk().unwrap().fill().unwrap();
    assert!(ballast > 0);

    // New questions while the store is full: the first ones may still
    // fit in the pages the store's files had begun (tmpfs allocates by
    // page); once a write fails, a clear refusal, each answer in bounded
    // time. An accepted one must be answered once space returns.
    let http = reqwest::Client::new();
    let post = |(session, token): &(SessionId, String), message_id: MessageId, content: String| {
        let request = http
            .post(format!("{base}/api/chat?session={session}"))
            .bearer_auth(token)
            .json(&serde_json::json!({"message_id": message_id, "content": content}))
            .send();
        async move {
            let asked_at = Instant::now();
            let response = tokio::time::timeout(Duration::from_secs(30), request)
                .await
                .expect("the gateway answered within 30 s")
                .unwrap();
            (response, asked_at.elapsed())
        }
    };
    let mut accepted = Vec::new();
    let mut refused = None;
    for (i, probe) in probes.iter().enumerate() {
        let (id, content) = (MessageId::new(), format!("while the disk is full, {i}"));
        let (response, waited) = post(probe, id, content.clone()).await;
        match response.status().as_u16() {
            202 => accepted.push((
                probe,
                ExpectedAnswer {
                    message_id: id,
                    text: worker::backends::demo::answer(&content, TOKENS),
                },
            )),
            503 => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                assert_eq!(retry_after.as_deref(), Some("2"));
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "internal", "{body}");
                refused = Some((probe, id, content, waited));
                break;
            }
            other => panic!("POST /api/chat answered {other} while the disk was full"),
        }
    }
    let (refused_probe, refused_id, refused_content, waited) =
        refused.expect("no question was refused");

    // Space comes back; a stream that hit the write error stays broken in
    // nats-server until it restarts, so a supervisor restarts it.
    stack.nats().unwrap().disk().unwrap().free().unwrap();
    let health = format!("{}/healthz", stack.monitor_url());
    let freed = Instant::now();
    loop {
        if matches!(stack::http_get(&health).await, Ok((200, _))) {
            break;
        }
        if freed.elapsed() > Duration::from_secs(3) {
            tokio::task::block_in_place(|| stack.restart_nats()).unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The refused question, sent again with its id as PROTOCOL.md says,
    // is taken (its echo may have been stored before the refusal).
    let retried = loop {
        let (response, _) = post(refused_probe, refused_id, refused_content.clone()).await;
        match response.status().as_u16() {
            202 => break response,
            503 | 429 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(2)).await
            }
            other => panic!("the retry was answered {other}"),
        }
    };
    drop(retried);
    accepted.push((
        refused_probe,
        ExpectedAnswer {
            message_id: refused_id,
            text: worker::backends::demo::answer(&refused_content, TOKENS),
        },
    ));

    // The answer in flight ends (finished, or stopped with a terminal
    // event), and a new question is answered.
    let (mut streaming, asked) = asking.await.unwrap();
    asked.unwrap();
    asker
        .ask("after the disk was freed", deadline)
        .await
        .unwrap();
    let mut answered = 0;
    for client in [&mut streaming, &mut asker] {
        let (violations, events) = support::violations(&base, client, TOKENS).await;
        assert!(violations.is_empty(), "{violations:?}");
        assert!(!events.is_empty());
        answered = events.len();
    }
    // Every question the REST calls placed is answered whole, once.
    for ((session, token), expected) in &accepted {
        let expected = std::slice::from_ref(expected);
        let found = loop {
            let truth = api.events_until(*session, token, deadline).await.unwrap();
            let found = verify::check_answers(*session, &truth, expected);
            if found.is_empty() || Instant::now() > deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(found.is_empty(), "{found:?}");
    }
    println!(
        "{} question(s) accepted while full, then one refused after {waited:?} \
         ({} MiB ballast); {answered} events",
        accepted.len() - 1,
        ballast >> 20
    );
}
