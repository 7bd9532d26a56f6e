//! The compose deployment run for real (deploy/compose.yaml on podman):
//! the images are built from the debug binaries `just test` has already
//! built, the deployment starts under a project name and port of its own,
//! sessions chat through its Nginx while a gateway container and a worker
//! container that is mid-answer are `podman kill`ed, and every session's
//! events are checked against the stored events (each answer once, whole,
//! in order); started again, the gateway gets its sessions back from
//! Nginx. In a second round the recovery tester itself (`--compose`) kills
//! the NATS node leading `CHAT_EVENTS` and starts it again, checked the
//! same way. Everything (containers, network, volumes, the test's images) is
//! removed at the end, also when the test fails.
//!
//! Needs podman, podman-compose and mmdebstrap (`scripts/install-deps.sh
//! --containers`) and root: run by `just test-compose` (part of `just
//! test`), not by a bare `cargo test`.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use chatctl::recovery::{self, RecoveryArgs, Report};
use tokio::time::Instant;

/// The demo model's settings in the deployment: long enough answers that
/// a kill lands mid-answer, a short `ack_wait` so a killed worker's job
/// comes back soon.
const ENV: [(&str, &str); 8] = [
    ("CHAT_ACK_WAIT_MS", "2000"),
    ("DEMO_TOKENS_PER_SEC", "60"),
    ("DEMO_FIRST_TOKEN_MS", "50"),
    ("DEMO_ANSWER_TOKENS", "60"),
    ("RUST_LOG", "warn"),
    // Every session of the test comes from one address.
    ("NGINX_SESSION_RATE", "100000"),
    ("NGINX_SESSION_BURST", "100000"),
    ("NGINX_API_RATE", "10000"),
];

fn project_dir() -> PathBuf {
    stack::project::project_dir()
}

/// One compose deployment of this test, taken down with its volumes and
/// images on drop.
struct Deployment {
    project: String,
    tag: String,
    port: u16,
}

impl Deployment {
    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("COMPOSE_PROJECT".into(), self.project.clone()));
        env.push(("CHAT_IMAGE_TAG".into(), self.tag.clone()));
        env.push(("CHAT_HTTP_PORT".into(), self.port.to_string()));
        env.push((
            "CONTAINERS_CONF".into(),
            project_dir()
                .join("deploy/containers.conf")
                .display()
                .to_string(),
        ));
        env
    }

    fn script(&self, script: &str, args: &[&str], extra: &[(&str, String)]) -> Output {
        let mut command = Command::new(project_dir().join("scripts").join(script));
        command.args(args).envs(self.env());
        for (k, v) in extra {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        println!(
            "{script} {}: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn label(&self) -> String {
        format!("label=io.podman.compose.project={}", self.project)
    }

    /// The project's containers of `service` (running or not).
    fn containers(&self, service: &str) -> Vec<String> {
        let service = format!("label=com.docker.compose.service={service}");
        podman_lines(&[
            "ps",
            "-a",
            "--filter",
            &self.label(),
            "--filter",
            &service,
            "--format",
            "{{.Names}}",
        ])
    }

    /// The project's leftovers: containers, networks, volumes.
    fn leftovers(&self) -> Vec<String> {
        let label = self.label();
        let mut all = podman_lines(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"]);
        all.extend(podman_lines(&[
            "network",
            "ls",
            "--filter",
            &label,
            "--format",
            "{{.Name}}",
        ]));
        all.extend(podman_lines(&[
            "volume",
            "ls",
            "--filter",
            &label,
            "--format",
            "{{.Name}}",
        ]));
        all
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.script("compose.sh", &["down", "--volumes"], &[]);
        let images: Vec<String> = ["gateway", "worker", "chatctl", "nats", "nginx"]
            .iter()
            .map(|i| format!("localhost/chat-{i}:{}", self.tag))
            .collect();
        let mut args = vec!["rmi", "--force"];
        args.extend(images.iter().map(String::as_str));
        podman(&args);
    }
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .env(
            "CONTAINERS_CONF",
            project_dir().join("deploy/containers.conf"),
        )
        .output()
        .unwrap()
}

fn podman_lines(args: &[&str]) -> Vec<String> {
    let out = podman(args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A container's address on the deployment's network (reachable from
/// this host: podman runs as root here).
fn address(container: &str) -> String {
    let out = podman(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        container,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn kill(container: &str) {
    let out = podman(&["kill", container]);
    assert!(out.status.success(), "podman kill {container}: {out:?}");
    println!("killed {container}");
}

async fn get(url: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// A gauge of a container's `/metrics` on `port`.
async fn gauge(container: &str, port: u16, name: &str) -> f64 {
    let text = get(&format!("http://{}:{port}/metrics", address(container)))
        .await
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until one of `containers` has `name` (a gauge on `port`) at
/// `at_least` or more; returns the one with the most.
async fn busiest(containers: &[String], port: u16, name: &str, at_least: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut best = (0.0, String::new());
        for c in containers {
            let value = gauge(c, port, name).await;
            if value > best.0 {
                best = (value, c.clone());
            }
        }
        if best.0 >= at_least {
            println!("{} has {name} {}", best.1, best.0);
            return best.1;
        }
        assert!(
            Instant::now() < deadline,
            "no container ever had {name} >= {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server name of the node leading `stream`, asked of any node.
async fn leader_of(nodes: &[String], stream: &str) -> Option<String> {
    for node in nodes {
        let url = format!("http://{}:8222/jsz?streams=true", address(node));
        let Some(text) = get(&url).await else {
            continue;
        };
        let jsz: serde_json::Value = serde_json::from_str(&text).ok()?;
        let details = jsz["account_details"].as_array()?;
        for account in details {
            for s in account["stream_detail"].as_array().into_iter().flatten() {
                if s["name"] == stream {
                    if let Some(leader) = s["cluster"]["leader"].as_str() {
                        return Some(leader.to_string());
                    }
                }
            }
        }
    }
    None
}

fn round(url: &str, seed: u64) -> RecoveryArgs {
    RecoveryArgs {
        url: Some(url.to_string()),
        sessions: 24,
        turns: 2,
        seed,
        fault_kinds: Some("drop".into()),
        faults: Some(0),
        duration_secs: Some(8),
        deadline_secs: Some(120),
        answer_tokens: 60,
        ..RecoveryArgs::defaults()
    }
}

fn assert_clean(report: &Report, what: &str) {
    println!("{what}:\n{}", report.to_markdown());
    assert_eq!(
        report.violation_count(),
        0,
        "{what}: {}",
        report.to_markdown()
    );
    assert_eq!(report.messages, 48, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs podman and root: just test-compose"]
async fn the_compose_deployment_survives_killed_containers() {
    let started = Instant::now();
    let deployment = Deployment {
        project: format!("chattest{}", std::process::id()),
        tag: format!("test{}", std::process::id()),
        port: stack::ports::free_port().unwrap(),
    };
    let bin_dir = stack::project::bin_dir().unwrap();
    let images = deployment.script(
        "images.sh",
        &[],
        &[
            ("SKIP_BUILD", "1".into()),
            ("SKIP_WEB_BUILD", "1".into()),
            ("CHAT_BIN_DIR", bin_dir.display().to_string()),
        ],
    );
    assert!(images.status.success(), "scripts/images.sh failed");
    let built = started.elapsed();
    let up = deployment.script("compose.sh", &["up", "--no-build"], &[]);
    assert!(up.status.success(), "scripts/compose.sh up failed");
    println!(
        "images in {:.1} s, up in {:.1} s",
        built.as_secs_f64(),
        (started.elapsed() - built).as_secs_f64()
    );
    let workers = deployment.containers("worker");
    assert_eq!(workers.len(), 3, "{workers:?}");
    let nodes: Vec<String> = ["nats-1", "nats-2", "nats-3"]
        .iter()
        .flat_map(|n| deployment.containers(n))
        .collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let gateways: Vec<String> = ["gateway-1", "gateway-2", "gateway-3"]
        .iter()
        .flat_map(|g| deployment.containers(g))
        .collect();
    assert_eq!(gateways.len(), 3, "{gateways:?}");

    // Round 1: the gateway holding the most sockets, then a worker that is
    // mid-answer, killed.
    let faults = {
        let workers = workers.clone();
        tokio::spawn(async move {
            let gateway = busiest(&gateways, 3000, "chat_gateway_connections_open", 2.0).await;
            kill(&gateway);
            let worker = busiest(&workers, 9100, "chat_worker_jobs_in_flight", 1.0).await;
            kill(&worker);
            gateway
        })
    };
    let report = recovery::run(&round(&deployment.url(), 1)).await.unwrap();
    let gateway = faults.await.unwrap();
    assert_clean(&report, "gateway and worker killed");
    assert!(
        report.reconnects > 0,
        "no client lost its socket with the gateway"
    );

    // Started again (as an operator would: `podman kill` is a stop by
    // hand, which no restart policy undoes), the gateway comes back with
    // another address, and Nginx sends its sessions to it again.
    podman(&["start", &gateway]);
    // gateway-N's node name is gw-N (deploy/compose.yaml).
    let service = podman_lines(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"com.docker.compose.service\"}}",
        &gateway,
    ]);
    let node_name = format!("\"{}\"", service[0].replace("gateway-", "gw-"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut probe = 0u64;
    loop {
        probe += 1;
        let url = format!("{}/health?session=probe-{probe}", deployment.url());
        if get(&url)
            .await
            .is_some_and(|body| body.contains(&node_name))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Nginx never reached the started {gateway}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Round 2: the node leading CHAT_EVENTS, killed and started again by
    // the recovery tester itself (`--compose`: faults by container), which
    // waits for it to answer its health check.
    assert!(leader_of(&nodes, "CHAT_EVENTS").await.is_some());
    let report = recovery::run(&RecoveryArgs {
        compose: Some(deployment.project.clone()),
        fault_kinds: Some("node-kill".into()),
        faults: Some(1),
        ..round(&deployment.url(), 2)
    })
    .await
    .unwrap();
    assert_clean(&report, "the node leading CHAT_EVENTS killed");
    assert_eq!(report.failed_faults(), 0, "{:?}", report.faults);
    let hit = report.faults[0].detail.clone().unwrap_or_default();
    assert!(
        hit.starts_with("nats-") && hit.ends_with(" led CHAT_EVENTS"),
        "{:?}",
        report.faults
    );

    let down = deployment.script("compose.sh", &["down", "--volumes"], &[]);
    assert!(down.status.success());
    assert_eq!(deployment.leftovers(), Vec::<String>::new());
    println!("compose test took {:.1} s", started.elapsed().as_secs_f64());
}
