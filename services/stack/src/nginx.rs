//! Nginx in front of the gateways, configured from the project's
//! `nginx/nginx.conf.template` (the same file `just up` renders), so tests
//! exercise the routing, limits and WebSocket upgrade production uses.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::ports::free_port;
use crate::process::{log_tail, send_signal, READY_TIMEOUT};
use crate::project::project_dir;

/// Nginx's per-client-IP limits. Tests and benchmarks all come from
/// 127.0.0.1, so the defaults here are generous; `just up` uses its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NginxLimits {
    /// WebSocket connections per IP (`limit_conn` on `/ws/`).
    pub ws_connections: u32,
    /// REST requests per second per IP (`limit_req` on `/api/`).
    pub api_rate_per_sec: u32,
    /// REST requests above the rate accepted at once.
    pub api_burst: u32,
    /// Sessions one IP may create per minute (`POST /api/sessions` and a
    /// socket without `?session=`).
    pub sessions_per_min: u32,
    /// Sessions above that rate created at once.
    pub session_burst: u32,
}

impl Default for NginxLimits {
    fn default() -> Self {
        Self {
            ws_connections: 20_000,
            api_rate_per_sec: 10_000,
            api_burst: 20_000,
            sessions_per_min: 1_000_000,
            session_burst: 100_000,
        }
    }
}

/// The nginx binary: `NGINX_BIN`, else `nginx` on `PATH`, else Debian's
/// `/usr/sbin/nginx`.
pub fn nginx_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NGINX_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| anyhow!("nginx not found: run scripts/install-deps.sh (apt-get install nginx) or set NGINX_BIN"))
}

/// A running Nginx in front of some upstreams, from
/// `nginx/nginx.conf.template`. Stopped (and its workers with it) on drop.
pub struct Nginx {
    process: Option<Child>,
    port: u16,
    run_dir: PathBuf,
}

/// Everything the Nginx template needs.
#[derive(Clone, Debug)]
pub struct NginxConfig {
    pub port: u16,
    /// Prefix folder: pid, lock file and temp dirs.
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub web_root: PathBuf,
    /// The gateways' addresses (loopback, or their hosts' bridge addresses).
    pub upstreams: Vec<SocketAddr>,
    pub limits: NginxLimits,
}

/// Fills the placeholders of the Nginx template (the same rendering as
/// `scripts/render-nginx.sh`). Fails when a placeholder is left.
pub fn render_nginx(template: &str, config: &NginxConfig) -> anyhow::Result<String> {
    let upstreams = config
        .upstreams
        .iter()
        .map(|addr| format!("        server {addr} max_fails=0;"))
        .collect::<Vec<_>>()
        .join("\n");
    // Loopback: the container image renders the same template with
    // 0.0.0.0 (scripts/render-nginx.sh, NGINX_LISTEN_ADDR).
    let text = template
        .replace("@@LISTEN_ADDR@@", "127.0.0.1")
        .replace("@@PORT@@", &config.port.to_string())
        .replace("@@RUN_DIR@@", &config.run_dir.display().to_string())
        .replace("@@LOG_DIR@@", &config.log_dir.display().to_string())
        .replace("@@WEB_ROOT@@", &config.web_root.display().to_string())
        .replace("@@UPSTREAMS@@", &upstreams)
        .replace(
            "@@WS_CONN_LIMIT@@",
            &config.limits.ws_connections.to_string(),
        )
        .replace("@@API_RATE@@", &config.limits.api_rate_per_sec.to_string())
        .replace("@@API_BURST@@", &config.limits.api_burst.to_string())
        .replace(
            "@@SESSION_RATE@@",
            &config.limits.sessions_per_min.to_string(),
        )
        .replace(
            "@@SESSION_BURST@@",
            &config.limits.session_burst.to_string(),
        );
    if let Some(at) = text.find("@@") {
        let rest: String = text[at..].chars().take(40).collect();
        bail!("the Nginx template has a placeholder left: {rest}");
    }
    Ok(text)
}

impl Nginx {
    /// Renders the template into `config.run_dir/nginx.conf` and starts
    /// Nginx in the foreground; returns once it accepts connections. With
    /// `config.port` 0 a free port is picked (and picked again if another
    /// process took it first).
    pub async fn start(mut config: NginxConfig) -> anyhow::Result<Self> {
        let template_path = project_dir().join("nginx/nginx.conf.template");
        let template = std::fs::read_to_string(&template_path)
            .with_context(|| format!("reading {}", template_path.display()))?;
        std::fs::create_dir_all(&config.run_dir)?;
        std::fs::create_dir_all(&config.log_dir)?;
        // Nginx's workers drop root to `nobody`: they must reach the temp dirs.
        allow_traversal(&config.run_dir)?;
        allow_traversal(&config.log_dir)?;
        let binary = nginx_binary()?;
        let pick_port = config.port == 0;
        let mut last_error = None;
        for _ in 0..5 {
            if pick_port {
                config.port = free_port()?;
            }
            match Self::try_start(&binary, &template, &config).await {
                Ok(nginx) => return Ok(nginx),
                Err(e) if pick_port => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("nginx did not start")))
    }

    async fn try_start(
        binary: &Path,
        template: &str,
        config: &NginxConfig,
    ) -> anyhow::Result<Self> {
        let conf = config.run_dir.join("nginx.conf");
        std::fs::write(&conf, render_nginx(template, config)?)?;
        let error_log = config.log_dir.join("nginx-error.log");
        let out = File::options()
            .create(true)
            .append(true)
            .open(config.log_dir.join("nginx.log"))?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(&config.run_dir)
            .arg("-e")
            .arg(&error_log)
            .args(["-c", "nginx.conf", "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut nginx = Nginx {
            process: Some(child),
            port: config.port,
            run_dir: config.run_dir.clone(),
        };
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = nginx.process.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    nginx.process = None;
                    bail!(
                        "nginx exited ({status}); {}:\n{}\n{}",
                        error_log.display(),
                        log_tail(&error_log),
                        log_tail(&config.log_dir.join("nginx.log"))
                    );
                }
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", config.port))
                .await
                .is_ok()
            {
                return Ok(nginx);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "nginx did not listen on {} within {READY_TIMEOUT:?}",
                    config.port
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Stops the master with SIGTERM (it takes its workers down, which a
    /// SIGKILL would leave running), then SIGKILL if it lingers.
    pub fn stop(&mut self) {
        let Some(mut child) = self.process.take() else {
            return;
        };
        if send_signal(child.id(), "TERM").is_ok() {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `chmod o+x` on a folder we created, so Nginx workers running as `nobody`
/// can reach files below it (a fresh temp dir is 0700).
fn allow_traversal(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = std::fs::metadata(dir)?.permissions();
    permissions.set_mode(permissions.mode() | 0o755);
    std::fs::set_permissions(dir, permissions).with_context(|| format!("chmod {}", dir.display()))
}
