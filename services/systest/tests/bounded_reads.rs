//! A flood of full replays cannot run a gateway out of memory: one session
//! holds 100,000 stored events, and clients ask for all of them at once, over
//! and over (`?after_seq=0`, `resume` from 0, `GET /api/events?after_seq=0`).
//! Every read is paged at the source and sent page by page, so the gateway's
//! peak memory stays within a bound that does not grow with the session:
//! [`GROWTH_BOUND`] above what it used before the flood.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use async_nats::jetstream;
use futures::{SinkExt, StreamExt};
use protocol::{subjects, Event, MessageId, SessionId};
use serde_json::json;
use stack::{Stack, StackOptions};
use tokio_tungstenite::tungstenite::Message;

const EVENTS: u32 = 100_000;
/// Sockets that each take the whole session twice (attach, then `resume`).
const SOCKETS: usize = 2;
/// REST clients that each page from the start over and over.
const PAGERS: usize = 6;
const PAGES_EACH: usize = 20;
/// The most the gateway's peak resident memory may grow during the flood.
/// Reading the whole session per request (about 40 MB of frames each)
/// would take it past this many times over.
const GROWTH_BOUND: u64 = 64 << 20;

/// A `/proc/PID/status` field in bytes (`VmRSS`, `VmHWM`).
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

async fn store_events(js: &jetstream::Context, session: SessionId) {
    let message_id = MessageId::new();
    let mut acks = Vec::new();
    for index in 0..EVENTS {
        let event = Event::Chunk {
            message_id,
            attempt: 1,
            index,
            text: "a token of about forty bytes, stored ".into(),
            published_at_us: None,
        };
        acks.push(
            js.publish(subjects::events(session), event.to_payload())
                .await
                .unwrap(),
        );
        if acks.len() == 2_000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// Attaches from 0, then resumes from 0: returns the events received.
async fn replay_twice(ws_base: String, session: String, token: String) -> u64 {
    let url = format!("{ws_base}/ws/chat?session={session}&after_seq=0");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let auth = json!({"type": "auth", "token": token}).to_string();
    ws.send(Message::Text(auth.into())).await.unwrap();
    let mut events = 0u64;
    let mut resumed = false;
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message.unwrap() else {
            continue;
        };
        if text.contains("\"seq\":") {
            events += 1;
        }
        if events == u64::from(EVENTS) && !resumed {
            resumed = true;
            let resume = json!({"type": "resume", "after_seq": 0}).to_string();
            ws.send(Message::Text(resume.into())).await.unwrap();
        }
        if events == 2 * u64::from(EVENTS) {
            break;
        }
    }
    events
}

#[tokio::test]
async fn a_flood_of_full_replays_keeps_the_gateways_memory_bounded() {
    let stack = Stack::start(StackOptions {
        gateways: 1,
        workers: 1,
        nginx: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let base = stack.gateway_url(0);
    let ws_base = base.replacen("http", "ws", 1);
    let http = reqwest::Client::new();
    let session = support::new_session(&http, &base).await;
    // The events a long answer would leave, stored as a worker stores them.
    let client = stack
        .connect_nats(protocol::access::Role::Worker)
        .await
        .unwrap();
    let id: SessionId = session.id.parse().unwrap();
    let started = std::time::Instant::now();
    store_events(&jetstream::new(client), id).await;
    eprintln!("stored {EVENTS} events in {:?}", started.elapsed());
    let started = std::time::Instant::now();

    let pid = stack.gateway_pid(0).unwrap();
    let before = memory(pid, "VmRSS");
    let mut tasks = Vec::new();
    for _ in 0..SOCKETS {
        let (ws_base, id, token) = (ws_base.clone(), session.id.clone(), session.token.clone());
        tasks.push(tokio::spawn(replay_twice(ws_base, id, token)));
    }
    let mut pagers = Vec::new();
    for _ in 0..PAGERS {
        let (http, base) = (http.clone(), base.clone());
        let (id, token) = (session.id.clone(), session.token.clone());
        pagers.push(tokio::spawn(async move {
            let url = format!("{base}/api/events?session={id}&after_seq=0");
            for _ in 0..PAGES_EACH {
                let body: serde_json::Value = http
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let page = body["events"].as_array().unwrap().len();
                assert!(page > 0 && page <= 1_000, "a page of {page} events");
            }
        }));
    }
    for pager in pagers {
        pager.await.unwrap();
    }
    for task in tasks {
        assert_eq!(
            task.await.unwrap(),
            2 * u64::from(EVENTS),
            "every event, twice"
        );
    }
    eprintln!("the flood took {:?}", started.elapsed());
    let peak = memory(pid, "VmHWM");
    let growth = peak.saturating_sub(before);
    eprintln!(
        "gateway memory: {} MiB before the flood, peak {} MiB (+{} MiB)",
        before >> 20,
        peak >> 20,
        growth >> 20
    );
    assert!(
        growth < GROWTH_BOUND,
        "the gateway's peak memory grew by {} MiB (bound {} MiB)",
        growth >> 20,
        GROWTH_BOUND >> 20
    );

    // The stream's bounds came from the cache, not one STREAM.INFO per read.
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    let asked: f64 = text
        .lines()
        .find(|l| l.starts_with("chat_gateway_stream_info_requests_total"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .parse()
        .unwrap();
    let reads = (2 * SOCKETS + PAGERS * PAGES_EACH) as f64;
    assert!(
        asked < reads / 2.0,
        "{asked} STREAM.INFO requests for {reads} reads"
    );
}
