//! A freshly started 3-node cluster (issue 14): the layout step run the
//! moment the nodes are started (before they have formed a cluster, as
//! `just cluster up` followed at once by `just up` did) waits for the
//! cluster and sets up every R3 stream, and `scripts/status.sh` then shows
//! each node, the leader of every stream and of the KV bucket, and each
//! replica's lag.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use protocol::setup::{LayoutConfig, SETUP_PATIENCE};
use protocol::subjects;

/// Three nats-server processes and their files; killed and removed on drop.
struct Cluster {
    dir: PathBuf,
    nodes: Vec<Child>,
    client_urls: Vec<String>,
    monitor_urls: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts three nodes on free ports, each with its own store, routes to all.
fn start_cluster() -> Cluster {
    let dir = std::env::temp_dir().join(format!("chat-cluster-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ports: Vec<[u16; 3]> = (0..3)
        .map(|_| [free_port(), free_port(), free_port()])
        .collect();
    let routes: Vec<String> = ports
        .iter()
        .map(|[_, _, route]| format!("nats-route://127.0.0.1:{route}"))
        .collect();
    let binary = stack::nats::nats_server_binary().unwrap();
    let mut cluster = Cluster {
        dir: dir.clone(),
        nodes: Vec::new(),
        client_urls: Vec::new(),
        monitor_urls: Vec::new(),
    };
    for (i, [client, monitor, route]) in ports.iter().enumerate() {
        let n = i + 1;
        let store = dir.join(format!("n{n}"));
        let config = format!(
            "server_name: st-n{n}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
             jetstream {{ store_dir: {store:?} }}\n\
             cluster {{ name: st, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
            routes.join(", ")
        );
        let path = dir.join(format!("n{n}.conf"));
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join(format!("n{n}.log"))).unwrap();
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        cluster.nodes.push(child);
        cluster
            .client_urls
            .push(format!("nats://127.0.0.1:{client}"));
        cluster
            .monitor_urls
            .push(format!("http://127.0.0.1:{monitor}"));
    }
    cluster
}

fn status_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/status.sh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layout_waits_for_a_forming_cluster_and_status_shows_its_leaders() {
    let cluster = start_cluster();
    // At once, with every node as a seed: the nodes are still starting.
    let (options, _connection) = protocol::connect::options("cluster-status-test");
    let client = options
        .connect(protocol::connect::seed_list(&cluster.client_urls.join(",")))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let config = LayoutConfig {
        replicas: 3,
        ..LayoutConfig::default()
    };
    let layout = protocol::setup::ensure_when_ready(&js, &config, SETUP_PATIENCE)
        .await
        .unwrap();
    assert_eq!(layout.events.cached_info().config.num_replicas, 3);

    // `just status` on the cluster: pid files and monitoring URLs under run/cluster.
    let run = cluster.dir.join("run");
    std::fs::create_dir_all(run.join("cluster")).unwrap();
    for (i, (node, url)) in cluster.nodes.iter().zip(&cluster.monitor_urls).enumerate() {
        let n = i + 1;
        std::fs::write(run.join(format!("cluster/n{n}.pid")), node.id().to_string()).unwrap();
        std::fs::write(run.join(format!("cluster/n{n}.monitor-url")), url).unwrap();
    }
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(status_script())
            .env("RUN_DIR", &run)
            .env_remove("NATS_MONITOR_URL")
            .env_remove("CLUSTER_MONITOR_URLS")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");

    let names = ["st-n1", "st-n2", "st-n3"];
    for name in names {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(name) && l.contains(" up ")),
            "node {name} is listed as up:\n{text}"
        );
    }
    let bucket = format!("KV {}", subjects::SESSIONS_BUCKET);
    for stream in [
        subjects::EVENTS_STREAM,
        subjects::REQUESTS_STREAM,
        subjects::HISTORY_STREAM,
        bucket.as_str(),
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{stream} ")) && l.contains("lag="))
            .unwrap_or_else(|| panic!("no leader line for {stream}:\n{text}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let leader = fields[stream.split_whitespace().count()];
        assert!(names.contains(&leader), "{stream} is led by a node: {line}");
        assert_eq!(line.matches("lag=").count(), 2, "two followers: {line}");
    }
}
