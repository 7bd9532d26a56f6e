//! Faults by container: `chatctl recovery --url URL --compose PROJECT`
//! runs against the compose deployment (deploy/compose.yaml) and injects
//! `gateway`, `worker` and `node-kill` faults into its containers: killed
//! (`podman kill`, or `docker kill` with `CONTAINER_ENGINE=docker`), then
//! started again (a kill by hand is a stop no restart policy undoes) and
//! waited for until it answers its health check. The containers are found
//! by their compose labels; their addresses on the deployment's network
//! must be reachable from here (a rootful engine on Linux).

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use stack::{http_get, wait_healthy};

use crate::faults::{leader_streams, Fault, FaultKind};

/// How long a started container may take to answer its health check.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The containers of one compose project.
#[derive(Clone, Debug)]
pub struct ComposeDeployment {
    engine: String,
    /// `gateway-1`, `gateway-2`, … in that order.
    gateways: Vec<String>,
    workers: Vec<String>,
    /// `nats-1` … `nats-3`, in that order.
    nodes: Vec<String>,
}

impl ComposeDeployment {
    /// The running project `project` on `CONTAINER_ENGINE` (podman).
    pub fn find(project: &str) -> anyhow::Result<Self> {
        let engine = std::env::var("CONTAINER_ENGINE")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "podman".into());
        let label = format!("label=com.docker.compose.project={project}");
        let listed = run(
            &engine,
            &["ps", "--filter", &label, "--format", "{{.Names}}"],
        )?;
        let mut by_service = Vec::new();
        for name in listed.lines().filter(|l| !l.is_empty()) {
            by_service.push((service(&engine, name)?, name.to_string()));
        }
        by_service.sort();
        let pick = |prefix: &str| -> Vec<String> {
            by_service
                .iter()
                .filter(|(service, _)| service.starts_with(prefix))
                .map(|(_, name)| name.clone())
                .collect()
        };
        let deployment = Self {
            gateways: pick("gateway-"),
            workers: pick("worker"),
            nodes: pick("nats-"),
            engine,
        };
        if deployment.gateways.is_empty() || deployment.workers.is_empty() {
            bail!("no running gateway and worker containers of the compose project {project}");
        }
        Ok(deployment)
    }

    pub fn gateway_count(&self) -> usize {
        self.gateways.len()
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The `i`th gateway's node name (`gateway-N` runs as `gw-N`).
    pub fn gateway_node(&self, i: usize) -> String {
        format!("gw-{}", i + 1)
    }

    /// Kills gateway `i` and starts it again.
    pub async fn kill_gateway(&self, i: usize) -> anyhow::Result<()> {
        let name = self
            .gateways
            .get(i)
            .ok_or_else(|| anyhow!("no gateway {i}"))?;
        self.kill_and_start(name, 3000, "/health").await
    }

    /// Kills worker `i` and starts it again.
    pub async fn kill_worker(&self, i: usize) -> anyhow::Result<()> {
        let name = self
            .workers
            .get(i)
            .ok_or_else(|| anyhow!("no worker {i}"))?;
        self.kill_and_start(name, 9100, "/health").await
    }

    /// Kills the node leading `stream` and starts it again; its name.
    pub async fn kill_leader_of(&self, stream: &str) -> anyhow::Result<String> {
        let leader = self.leader_of(stream).await?;
        let name = self
            .nodes
            .iter()
            .find(|n| service(&self.engine, n).is_ok_and(|s| s == leader))
            .ok_or_else(|| anyhow!("no container runs the node {leader}"))?
            .clone();
        self.kill_and_start(&name, 8222, "/healthz").await?;
        Ok(leader)
    }

    /// The server name of the node leading `stream` (asked of each node in
    /// turn: the nodes are named after their services, `nats-N`).
    async fn leader_of(&self, stream: &str) -> anyhow::Result<String> {
        for node in &self.nodes {
            let url = format!("http://{}:8222/jsz?streams=true", self.address(node)?);
            let Ok((200, body)) = http_get(&url).await else {
                continue;
            };
            let jsz: serde_json::Value = serde_json::from_str(&body).context("reading /jsz")?;
            let leader = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|s| s["name"] == stream)
                .and_then(|s| s["cluster"]["leader"].as_str());
            if let Some(leader) = leader {
                return Ok(leader.to_string());
            }
        }
        bail!("no node names a leader of {stream}")
    }

    async fn kill_and_start(&self, name: &str, port: u16, health: &str) -> anyhow::Result<()> {
        run(&self.engine, &["kill", name])?;
        run(&self.engine, &["start", name])?;
        // Started again, it has another address.
        let url = format!("http://{}:{port}{health}", self.address(name)?);
        wait_healthy(&url, START_TIMEOUT)
            .await
            .with_context(|| format!("{name} after its start"))
    }

    fn address(&self, name: &str) -> anyhow::Result<String> {
        let out = run(
            &self.engine,
            &[
                "inspect",
                "--format",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                name,
            ],
        )?;
        let address = out.trim();
        if address.is_empty() {
            bail!("{name} has no address");
        }
        Ok(address.to_string())
    }
}

/// Injects a `gateway`, `worker` or `node-kill` fault into `deployment`;
/// what a `node-kill` hit.
pub(super) async fn inject(
    fault: &Fault,
    deployment: &ComposeDeployment,
) -> anyhow::Result<Option<String>> {
    let target = fault.targets.first().copied().unwrap_or(0);
    match fault.kind {
        FaultKind::Gateway => deployment.kill_gateway(target).await?,
        FaultKind::Worker => deployment.kill_worker(target).await?,
        FaultKind::NodeKill => {
            let stream = leader_streams()
                .get(target)
                .cloned()
                .ok_or_else(|| anyhow!("no leader stream {target}"))?;
            let leader = deployment.kill_leader_of(&stream).await?;
            return Ok(Some(format!("{leader} led {stream}")));
        }
        kind => bail!("{kind} faults are not injected into containers"),
    }
    Ok(None)
}

/// The fault kinds injected into a compose deployment's containers.
pub fn by_container(kind: FaultKind) -> bool {
    matches!(
        kind,
        FaultKind::Drop | FaultKind::Gateway | FaultKind::Worker | FaultKind::NodeKill
    )
}

/// The compose service of container `name`.
fn service(engine: &str, name: &str) -> anyhow::Result<String> {
    let out = run(
        engine,
        &[
            "inspect",
            "--format",
            "{{index .Config.Labels \"com.docker.compose.service\"}}",
            name,
        ],
    )?;
    Ok(out.trim().to_string())
}

/// Runs the engine with `args`; its output, or an error with its stderr.
/// podman gets the project's engine configuration unless one is set
/// (deploy/containers.conf: runc; its default runtime fails here).
fn run(engine: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new(engine);
    command.args(args);
    if engine == "podman" && std::env::var_os("CONTAINERS_CONF").is_none() {
        command.env(
            "CONTAINERS_CONF",
            stack::project::project_dir().join("deploy/containers.conf"),
        );
    }
    let out = command
        .output()
        .with_context(|| format!("running {engine}"))?;
    if !out.status.success() {
        bail!(
            "{engine} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
