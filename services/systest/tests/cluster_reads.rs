//! `GET /api/events` on a cluster whose replica answering the gateway's
//! reads has fallen behind: a node cut off from its peers (its clients
//! still reach it) while the others store on, then healed, answers direct
//! gets from what it holds before it has caught up. The gateway must never
//! serve that older tail as the session's events. A file of its own, so it never runs at the same
//! time as another cluster (two clusters at once on two cores).

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use protocol::access::Role;
use protocol::events::Event;
use protocol::{subjects, MessageId, SessionId};
use serde_json::Value;
use stack::cluster::ClusterOptions;
use stack::{Stack, StackOptions};

const WAIT: Duration = Duration::from_secs(60);

/// What `GET /api/events` answers: its status, the `seq`s of the events
/// it returned, and its `Retry-After`.
async fn events(stack: &Stack, session: SessionId, token: &str) -> (u16, Vec<u64>, String) {
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/events?session={session}",
            stack.gateway_url(0)
        ))
        .bearer_auth(token)
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap();
    let seqs = body["events"]
        .as_array()
        .map(|events| events.iter().map(|e| e["seq"].as_u64().unwrap()).collect())
        .unwrap_or_default();
    (status, seqs, retry_after)
}

/// Whether the gateway's NATS connection is to node `node` (its
/// monitoring endpoint lists a connection named as the gateway).
async fn connected_to(stack: &Stack, node: usize) -> bool {
    let cluster = stack.cluster().unwrap();
    let url = format!("{}/connz", cluster.monitor_url(node));
    let Ok((200, body)) = stack::http::http_get(&url).await else {
        return false;
    };
    let connz: Value = serde_json::from_str(&body).unwrap();
    let gateway = stack.gateway_node(0);
    connz["connections"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["name"].as_str() == Some(gateway.as_str()))
    })
}

/// Stores `event` on the session's subject through node `node` alone, as
/// a worker does.
async fn store(stack: &Stack, node: usize, session: SessionId, event: &Event) -> u64 {
    let cluster = stack.cluster().unwrap();
    let options = stack
        .nats_security()
        .access(Role::Worker)
        .apply(Role::Worker, async_nats::ConnectOptions::new())
        .unwrap();
    let client = options.connect(cluster.client_url(node)).await.unwrap();
    let js = jetstream::new(client);
    js.publish(subjects::events(session), event.to_payload())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_its_peers_never_serves_a_short_page_of_events() {
    let mut stack = Stack::start(StackOptions {
        gateways: 1,
        workers: 0,
        nginx: false,
        cluster: Some(ClusterOptions::default()),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let cluster = stack.cluster().unwrap();
    if !cluster.namespaced() {
        eprintln!(
            "{:?}: a node cut off from its peers alone needs namespaces",
            cluster.loopback_reason()
        );
        return;
    }
    let created = support::new_session(&reqwest::Client::new(), &stack.gateway_url(0)).await;
    let session: SessionId = created.id.parse().unwrap();
    let token = created.token;

    // A follower of CHAT_EVENTS falls behind; the leader stores on.
    let leader = cluster.leader_of(subjects::EVENTS_STREAM).await.unwrap();
    let behind = (leader + 1) % 3;
    let peers: Vec<usize> = (0..3).filter(|&n| n != behind).collect();
    let message_id = MessageId::new();
    let asked = Event::UserMessage {
        message_id,
        content: "asked before the cut".into(),
        replaces: None,
    };
    let first = store(&stack, leader, session, &asked).await;
    let (converged, views) = cluster.wait_converged(WAIT).await;
    assert!(converged, "{views:?}");

    // The gateway reads through the node that will fall behind.
    stack.cut_gateway_from_nodes(0, &peers).unwrap();
    let deadline = Instant::now() + WAIT;
    while !connected_to(&stack, behind).await {
        assert!(
            Instant::now() < deadline,
            "the gateway never moved to n{}",
            behind + 1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(events(&stack, session, &token).await.0, 200);

    stack.cluster_mut().unwrap().isolate(behind).unwrap();
    let answered = Event::Chunk {
        message_id,
        attempt: 1,
        index: 0,
        text: "stored while a replica was cut off".into(),
        published_at_us: None,
    };
    let second = store(&stack, leader, session, &answered).await;
    assert!(second > first);

    // Cut off, the node behind has no leader to ask: the gateway says "try
    // again", never a page without `second`.
    let (status, seqs, retry_after) = events(&stack, session, &token).await;
    assert_eq!(
        (status, retry_after.as_str()),
        (503, "2"),
        "a replica behind served {seqs:?} (the leader holds {first} and {second})"
    );

    // Healed, the node behind answers direct gets again before it has
    // caught up (nats-server turns them back on once a replica holds 90 %
    // of its log): that is when a read through it came back as `[first]`.
    // The first page the gateway serves must already hold `second`.
    let cluster = stack.cluster_mut().unwrap();
    cluster.heal(behind).unwrap();
    stack.heal_gateway(0).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, seqs, _) = events(&stack, session, &token).await;
        if status == 200 {
            assert_eq!(seqs, [first, second]);
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "still {status} after the heal");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
