//! A cluster's nodes are secured as `just cluster up` secures them (issue
//! 13): each node's routes require verified TLS (the route port says
//! nothing to a plaintext peer), a node with the right certificate but
//! without the routes' password is refused, a client without a known nkey
//! is refused, and ops with its nkey and the CA gets JetStream, which needs
//! the routes between the three.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::time::Duration;

use protocol::access::Role;
use serde_json::Value;
use stack::cluster::{ClusterOptions, HostsChoice, NatsCluster, NODES};
use tokio::io::AsyncBufReadExt;

/// Whether `addr` closes a plaintext connection without saying a word (it
/// waits for a TLS handshake first, then gives up on us).
async fn silent_until_tls(addr: &str) -> bool {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut line = String::new();
    let read = tokio::io::BufReader::new(stream).read_line(&mut line).await;
    matches!(read, Ok(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_clients_need_tls_and_credentials() {
    let cluster = NatsCluster::start(ClusterOptions {
        hosts: HostsChoice::Loopback,
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..NODES {
        let varz = stack::http_get(&format!("{}/varz", cluster.monitor_url(i)))
            .await
            .unwrap()
            .1;
        let varz: Value = serde_json::from_str(&varz).unwrap();
        let routes = &varz["cluster"];
        assert_eq!(routes["tls_required"], true, "node {i}: {routes}");
        assert_eq!(routes["tls_verify"], true, "node {i}: {routes}");
        assert!(silent_until_tls(&cluster.route_addr(i)).await, "node {i}");
    }

    // A node with the right certificate but without the routes' password
    // is refused by the one it dials.
    let tls = cluster.security().tls.clone().unwrap();
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue_conf = rogue_dir.path().join("rogue.conf");
    std::fs::write(
        &rogue_conf,
        format!(
            "listen: 127.0.0.1:-1\ncluster {{\n  name: chat\n  listen: 127.0.0.1:-1\n  {}\n  routes: [nats-route://{}]\n}}\n",
            tls.route_conf(),
            cluster.route_addr(0)
        ),
    )
    .unwrap();
    let mut rogue = std::process::Command::new(stack::nats::nats_server_binary().unwrap())
        .arg("-c")
        .arg(&rogue_conf)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let n1_log = cluster.run_dir().join("logs/n1.log");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&n1_log).unwrap_or_default();
        if log.contains("Authentication Failure") {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = rogue.kill();
            panic!("n1 did not refuse a route without the password:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = rogue.kill();
    let _ = rogue.wait();

    let urls = protocol::connect::seed_list(&cluster.client_urls());
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(urls.clone())
        .await;
    assert!(anonymous.is_err(), "a client without an nkey got in");

    // The ops role, with the CA: the cluster answers for JetStream, which
    // needs its routes (a meta leader elected among the three).
    let ops = cluster
        .security()
        .access(Role::Ops)
        .apply(Role::Ops, async_nats::ConnectOptions::new())
        .unwrap()
        .retry_on_initial_connect()
        .connect(urls)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(ops);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while js.query_account().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no meta leader: the routes did not form"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
