//! The 3-node cluster harness against real nats-servers: R3 streams keep
//! serving when the leader dies, a partitioned node catches up once healed,
//! replicas converge, and nothing the harness made outlives it.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use stack::cluster::{ClusterOptions, NatsCluster};

const STREAM: &str = "TEST_R3";

/// Publishes `n` messages, each retried (with its message id, so a retry
/// never stores it twice) while the cluster elects a leader.
async fn publish(js: &jetstream::Context, batch: &str, n: usize) {
    for i in 0..n {
        // Generous: a killed node that led both the meta group and the
        // stream can take many seconds of elections on a loaded machine.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let message = jetstream::message::PublishMessage::build()
                .payload(format!("{batch}{i}").into())
                .message_id(format!("{batch}{i}"));
            let acked = match js.send_publish("test.r3", message).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(()) => break,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "publish {batch}{i}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Creates the R3 stream, retried while the new cluster's meta group
/// elects its leader and places the replicas: healthy nodes do not yet
/// mean a stream can be placed, and on a loaded machine the first create
/// has outlived the 5 s request timeout. Creating with the same config
/// again is a no-op, so a create that timed out but landed is harmless.
async fn create_stream(js: &jetstream::Context) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let created = js
            .create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec!["test.r3".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => return,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "creating {STREAM}: {e}"
                );
                eprintln!("creating {STREAM}: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_stream_survives_its_leader_and_a_partition_and_converges() {
    let mut cluster = NatsCluster::start(ClusterOptions::default()).await.unwrap();
    let client = cluster.connect().await.unwrap();
    let js = jetstream::new(client);
    create_stream(&js).await;
    publish(&js, "a", 10).await;

    let leader = cluster.leader_of(STREAM).await.unwrap();
    cluster.kill(leader).unwrap();
    publish(&js, "b", 10).await; // a new leader takes over
    cluster.restart(leader).await.unwrap();

    let prefix = if cluster.namespaced() {
        let host = cluster.network().unwrap().hosts()[0].namespace.clone();
        let follower = (cluster.leader_of(STREAM).await.unwrap() + 1) % 3;
        cluster.partition(follower).unwrap();
        publish(&js, "c", 10).await;
        cluster.heal(follower).unwrap();
        Some(host.split('-').next().unwrap().to_string())
    } else {
        eprintln!("{:?}: no partition on loopback", cluster.loopback_reason());
        publish(&js, "c", 10).await;
        None
    };

    let (converged, views) = cluster.wait_converged(Duration::from_secs(30)).await;
    assert!(converged, "{views:?}");
    for (node, view) in &views {
        let state = &view.as_ref().unwrap()[STREAM];
        assert_eq!((state.messages, state.last_seq), (30, 30), "{node}");
    }
    drop(cluster);
    if let Some(prefix) = prefix {
        assert!(!namespaces().contains(&prefix), "{}", namespaces());
    }
}
