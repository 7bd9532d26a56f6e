//! The real system as separate processes, for tests and `chatctl`: one
//! nats-server, N `gateway` and M `worker` binaries, and Nginx in front,
//! each on a free loopback port, their output in log files of a temporary
//! run directory. Everything is killed when the [`Stack`] drops.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use stack::processes::{Stack, StackOptions};
//! let mut stack = Stack::start(StackOptions {
//!     gateways: 3,
//!     workers: 2,
//!     env: vec![("CHAT_ACK_WAIT_MS".into(), "2000".into())],
//!     ..Default::default()
//! })
//! .await?;
//! let entry = stack.nginx_url(); // http://127.0.0.1:PORT
//! stack.kill_gateway(0)?; // SIGKILL
//! stack.restart_gateway(0).await?; // same port, so Nginx still routes to it
//! # Ok(()) }
//! ```
//!
//! The binaries come from `CHAT_BIN_DIR`, or from the folder of the running
//! executable (`target/debug` for a test): run `cargo build --workspace` first.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::nats::NatsServer;

/// How long a process may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd process may take to exit before it is killed.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start. Build it with `..Default::default()`: fields may be added.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub gateways: usize,
    pub workers: usize,
    /// Extra environment for every gateway and worker (e.g.
    /// `CHAT_ACK_WAIT_MS`, `DEMO_TOKENS_PER_SEC`, `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Start Nginx in front of the gateways.
    pub nginx: bool,
    pub nginx_limits: NginxLimits,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            gateways: 3,
            workers: 3,
            env: Vec::new(),
            nginx: true,
            nginx_limits: NginxLimits::default(),
        }
    }
}

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
}

impl Default for NginxLimits {
    fn default() -> Self {
        Self {
            ws_connections: 20_000,
            api_rate_per_sec: 10_000,
            api_burst: 20_000,
        }
    }
}

/// Where the project's files are: the workspace root, found from this
/// crate's manifest at build time (`CHAT_PROJECT_DIR` overrides it).
pub fn project_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHAT_PROJECT_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The folder holding the `gateway` and `worker` binaries: `CHAT_BIN_DIR`,
/// else the folder of the running executable (a test's `target/debug/deps/x`
/// → `target/debug`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("CHAT_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("finding the running executable")?;
            let mut dir = exe
                .parent()
                .ok_or_else(|| anyhow!("{} has no folder", exe.display()))?
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    for name in ["gateway", "worker"] {
        if !dir.join(name).is_file() {
            bail!(
                "the {name} binary is not in {}: run `cargo build --workspace` first \
                 (or set CHAT_BIN_DIR to the folder holding gateway and worker)",
                dir.display()
            );
        }
    }
    Ok(dir)
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

/// A port that was free a moment ago: bound on 127.0.0.1:0, then released.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Sends `signal` (`TERM`, `KILL`, …) to `pid` with the `kill` command: the
/// workspace forbids `unsafe`, so no `libc::kill`.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed ({status})");
    }
    Ok(())
}

/// A plain HTTP/1.1 GET on a loopback URL (`http://127.0.0.1:PORT/path`):
/// the status code and the body. Enough for health checks and for tests
/// that look at Nginx's routing; not a general client.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    http_get_full(url, &[]).await.map(|r| (r.status, r.body))
}

/// An answer of [`http_get_full`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// [`http_get`] with extra request headers (e.g. `Authorization`), returning
/// the response headers too.
pub async fn http_get_full(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<HttpResponse> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http:// URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .map_err(|_| anyhow!("GET {url}: no answer within 10 s"))?
        .with_context(|| format!("GET {url}"))?;
    parse_response(&raw).with_context(|| format!("GET {url}: unreadable answer"))
}

fn parse_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&body[..end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        let start = end + 2;
        if size == 0 || body.len() < start + size {
            break;
        }
        out.extend_from_slice(&body[start..start + size]);
        body = &body[(start + size + 2).min(body.len())..];
    }
    out
}

/// Waits until `GET url` answers 200, or fails after `timeout` with the last
/// answer or error.
pub async fn wait_healthy(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match http_get(url).await {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => format!("{status} {body}"),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("{url} did not answer 200 within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(20);
    lines[from..].join("\n")
}

/// A child process whose stdout and stderr go to a log file, started and
/// waited for until it prints its ready line.
struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `binary` and returns once a stdout line contains `marker`,
    /// with that line. Stdout keeps being copied to the log afterwards.
    async fn start(
        binary: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
        marker: &'static str,
    ) -> anyhow::Result<(Self, String)> {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut stdout_log = File::options().create(true).append(true).open(&log)?;
        let mut child = Command::new(binary)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout of {}", binary.display()))?;
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(stdout_log, "{line}");
                if line.contains(marker) {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let mut process = Process {
            child: Some(child),
            log,
        };
        let what = binary.display().to_string();
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(line)) => Ok((process, line)),
            Ok(Err(_)) => {
                process.kill();
                bail!(
                    "{what} exited before printing {marker:?}; its log {}:\n{}",
                    process.log.display(),
                    log_tail(&process.log)
                )
            }
            Err(_) => {
                process.kill();
                bail!(
                    "{what} did not print {marker:?} within {READY_TIMEOUT:?}; its log {}:\n{}",
                    process.log.display(),
                    log_tail(&process.log)
                )
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `timeout`).
    async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("not running");
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        send_signal(child.id(), "TERM")?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("did not exit within {timeout:?} of SIGTERM; killed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Parses `http://127.0.0.1:PORT` out of a ready line, after `marker`.
fn addr_after(line: &str, marker: &str) -> anyhow::Result<SocketAddr> {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.trim_start().strip_prefix("http://"))
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '/').next())
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| anyhow!("no address after {marker:?} in {line:?}"))
}

/// Which binary a [`Service`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Gateway,
    Worker,
}

impl Role {
    fn binary(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Worker => "worker",
        }
    }

    fn marker(self) -> &'static str {
        match self {
            Role::Gateway => "listening on",
            Role::Worker => "metrics on",
        }
    }

    fn node(self, index: usize) -> String {
        match self {
            Role::Gateway => format!("gw-{index}"),
            Role::Worker => format!("w-{index}"),
        }
    }
}

/// One gateway or worker: its process and the address it serves, kept
/// across restarts.
struct Service {
    process: Process,
    addr: SocketAddr,
}

/// Everything needed to (re)start a gateway or worker.
struct Launcher {
    bin_dir: PathBuf,
    logs: PathBuf,
    env: Vec<(String, String)>,
}

impl Launcher {
    /// Starts one service; `port` 0 lets it choose, a restart passes the old one.
    async fn start(
        &self,
        role: Role,
        index: usize,
        nats_url: &str,
        port: u16,
    ) -> anyhow::Result<Service> {
        let node = role.node(index);
        let listen = format!("127.0.0.1:{port}");
        let listen_flag = match role {
            Role::Gateway => "--listen",
            Role::Worker => "--metrics-listen",
        };
        let args: Vec<String> = vec![
            "--nats-url".into(),
            nats_url.into(),
            "--node".into(),
            node.clone(),
            listen_flag.into(),
            listen,
        ];
        let log = self.logs.join(format!("{node}.log"));
        let (process, line) = Process::start(
            &self.bin_dir.join(role.binary()),
            &args,
            &self.env,
            log,
            role.marker(),
        )
        .await
        .with_context(|| format!("starting {node}"))?;
        let addr = addr_after(&line, role.marker())?;
        Ok(Service { process, addr })
    }
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
    /// Loopback ports of the gateways.
    pub upstreams: Vec<u16>,
    pub limits: NginxLimits,
}

/// Fills the placeholders of the Nginx template (the same rendering as
/// `scripts/render-nginx.sh`). Fails when a placeholder is left.
pub fn render_nginx(template: &str, config: &NginxConfig) -> anyhow::Result<String> {
    let upstreams = config
        .upstreams
        .iter()
        .map(|port| format!("        server 127.0.0.1:{port} max_fails=0;"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = template
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
        .replace("@@API_BURST@@", &config.limits.api_burst.to_string());
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

/// The running system. Dropping it kills every process and deletes the run
/// directory (kept, and its path printed, when a test is panicking).
pub struct Stack {
    launcher: Launcher,
    gateways: Vec<Service>,
    workers: Vec<Service>,
    nginx: Option<Nginx>,
    nats: NatsServer,
    run_dir: Option<tempfile::TempDir>,
}

impl Stack {
    /// Starts nats-server, the gateways and workers (in parallel), then
    /// Nginx with the gateways as upstreams, and returns once `/health`
    /// answers 200 through Nginx (or through every gateway without Nginx).
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        let bin_dir = bin_dir()?;
        let run_dir = tempfile::Builder::new().prefix("chat-stack-").tempdir()?;
        let logs = run_dir.path().join("logs");
        std::fs::create_dir_all(&logs)?;
        let nats = NatsServer::start().context("starting nats-server")?;
        let mut env = vec![
            ("RUST_LOG".to_string(), "info".to_string()),
            ("NO_COLOR".to_string(), "1".to_string()),
        ];
        env.extend(options.env.iter().cloned());
        let launcher = Launcher {
            bin_dir,
            logs: logs.clone(),
            env,
        };
        let url = nats.url();
        let gateways = futures::future::try_join_all(
            (0..options.gateways).map(|i| launcher.start(Role::Gateway, i, &url, 0)),
        );
        let workers = futures::future::try_join_all(
            (0..options.workers).map(|i| launcher.start(Role::Worker, i, &url, 0)),
        );
        let (gateways, workers) = futures::future::try_join(gateways, workers).await?;
        let mut stack = Stack {
            launcher,
            gateways,
            workers,
            nginx: None,
            nats,
            run_dir: Some(run_dir),
        };
        for i in 0..stack.gateways.len() {
            wait_healthy(&format!("{}/health", stack.gateway_url(i)), READY_TIMEOUT).await?;
        }
        if options.nginx && !stack.gateways.is_empty() {
            let web_dist = project_dir().join("web/dist");
            let web_root = if web_dist.is_dir() {
                web_dist
            } else {
                let empty = stack.run_dir().join("www");
                std::fs::create_dir_all(&empty)?;
                empty
            };
            let nginx = Nginx::start(NginxConfig {
                port: 0,
                run_dir: stack.run_dir().join("nginx"),
                log_dir: logs,
                web_root,
                upstreams: stack.gateways.iter().map(|g| g.addr.port()).collect(),
                limits: options.nginx_limits,
            })
            .await?;
            wait_healthy(&format!("{}/health", nginx.url()), READY_TIMEOUT).await?;
            stack.nginx = Some(nginx);
        }
        Ok(stack)
    }

    /// The entry point clients use: Nginx's `http://127.0.0.1:PORT`, or
    /// the first gateway's when the stack runs without Nginx.
    pub fn nginx_url(&self) -> String {
        match &self.nginx {
            Some(nginx) => nginx.url(),
            None => self.gateway_url(0),
        }
    }

    /// `http://127.0.0.1:PORT` of gateway `i` (0-based), also after restarts.
    pub fn gateway_url(&self, i: usize) -> String {
        self.gateways
            .get(i)
            .map(|g| format!("http://{}", g.addr))
            .unwrap_or_default()
    }

    /// The `--node` name of gateway `i`: `gw-<i>` (what `ready.node` says).
    pub fn gateway_node(&self, i: usize) -> String {
        Role::Gateway.node(i)
    }

    /// `http://127.0.0.1:PORT` serving worker `i`'s `/metrics` and `/health`.
    pub fn worker_metrics_url(&self, i: usize) -> String {
        self.workers
            .get(i)
            .map(|w| format!("http://{}", w.addr))
            .unwrap_or_default()
    }

    /// The `--node` name of worker `i`: `w-<i>`.
    pub fn worker_node(&self, i: usize) -> String {
        Role::Worker.node(i)
    }

    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// nats-server's monitoring base URL (`/jsz`, `/varz`); it changes
    /// after [`Stack::restart_nats`].
    pub fn monitor_url(&self) -> String {
        self.nats.monitor_url()
    }

    pub fn nats(&self) -> &NatsServer {
        &self.nats
    }

    pub fn gateway_count(&self) -> usize {
        self.gateways.len()
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The temporary folder with `logs/<node>.log`, `logs/nginx-*.log`.
    pub fn run_dir(&self) -> PathBuf {
        self.run_dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default()
    }

    /// The log file of gateway `gw-<i>` or worker `w-<i>` (by node name).
    pub fn log_path(&self, node: &str) -> PathBuf {
        self.launcher.logs.join(format!("{node}.log"))
    }

    /// Whether gateway `i`'s process is running.
    pub fn gateway_running(&mut self, i: usize) -> bool {
        self.gateways
            .get_mut(i)
            .is_some_and(|g| g.process.is_running())
    }

    /// Whether worker `i`'s process is running.
    pub fn worker_running(&mut self, i: usize) -> bool {
        self.workers
            .get_mut(i)
            .is_some_and(|w| w.process.is_running())
    }

    pub fn gateway_pid(&self, i: usize) -> Option<u32> {
        self.gateways.get(i).and_then(|g| g.process.pid())
    }

    pub fn worker_pid(&self, i: usize) -> Option<u32> {
        self.workers.get(i).and_then(|w| w.process.pid())
    }

    /// SIGKILL gateway `i`: its WebSockets drop without a close frame.
    pub fn kill_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        service(&mut self.gateways, Role::Gateway, i)?
            .process
            .kill();
        Ok(())
    }

    /// SIGTERM gateway `i` and wait for it to exit (graceful: 1012 closes).
    pub async fn terminate_gateway(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        let g = service(&mut self.gateways, Role::Gateway, i)?;
        g.process
            .terminate(TERMINATE_TIMEOUT)
            .await
            .with_context(|| format!("terminating {}", Role::Gateway.node(i)))
    }

    /// Starts gateway `i` again on its old port (killing it first if it
    /// still runs), so Nginx's upstream list stays right.
    pub async fn restart_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        self.restart(Role::Gateway, i).await
    }

    /// SIGKILL worker `i`: its jobs come back after `ack_wait`.
    pub fn kill_worker(&mut self, i: usize) -> anyhow::Result<()> {
        service(&mut self.workers, Role::Worker, i)?.process.kill();
        Ok(())
    }

    /// SIGTERM worker `i` and wait for it to exit.
    pub async fn terminate_worker(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        let w = service(&mut self.workers, Role::Worker, i)?;
        w.process
            .terminate(TERMINATE_TIMEOUT)
            .await
            .with_context(|| format!("terminating {}", Role::Worker.node(i)))
    }

    /// Starts worker `i` again (same metrics port), killing it first if it
    /// still runs.
    pub async fn restart_worker(&mut self, i: usize) -> anyhow::Result<()> {
        self.restart(Role::Worker, i).await
    }

    /// Kills nats-server and starts it again on the same port with the same
    /// store, as an operator's restart would. Blocks while it starts.
    pub fn restart_nats(&mut self) -> anyhow::Result<()> {
        self.nats.restart()
    }

    /// SIGKILL nats-server, keeping its store ([`Stack::restart_nats`] brings it back).
    pub fn kill_nats(&mut self) {
        self.nats.kill();
    }

    async fn restart(&mut self, role: Role, i: usize) -> anyhow::Result<()> {
        let list = match role {
            Role::Gateway => &mut self.gateways,
            Role::Worker => &mut self.workers,
        };
        let old = service(list, role, i)?;
        old.process.kill();
        let port = old.addr.port();
        let fresh = self.launcher.start(role, i, &self.nats.url(), port).await?;
        if let Some(slot) = list.get_mut(i) {
            *slot = fresh;
        }
        if role == Role::Gateway {
            wait_healthy(&format!("{}/health", self.gateway_url(i)), READY_TIMEOUT).await?;
        }
        Ok(())
    }
}

fn service(list: &mut [Service], role: Role, i: usize) -> anyhow::Result<&mut Service> {
    let count = list.len();
    list.get_mut(i)
        .ok_or_else(|| anyhow!("there is no {} {i} (the stack has {count})", role.binary()))
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut nginx) = self.nginx.take() {
            nginx.stop();
        }
        for s in self.gateways.iter_mut().chain(self.workers.iter_mut()) {
            s.process.kill();
        }
        if std::thread::panicking() {
            if let Some(dir) = self.run_dir.take() {
                eprintln!("stack: logs kept in {}", dir.keep().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines_give_their_address() {
        let line = "gateway gw-1 listening on http://127.0.0.1:3001 nats=nats://127.0.0.1:4222";
        assert_eq!(
            addr_after(line, "listening on").unwrap(),
            "127.0.0.1:3001".parse().unwrap()
        );
        let line = "worker w-1 metrics on http://127.0.0.1:9101/metrics backend=demo";
        assert_eq!(
            addr_after(line, "metrics on").unwrap(),
            "127.0.0.1:9101".parse().unwrap()
        );
        assert!(addr_after("listening on nothing", "listening on").is_err());
    }

    #[test]
    fn responses_parse_plain_and_chunked() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        assert_eq!(r.header("content-length"), Some("2"));
        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
        assert!(parse_response(b"garbage").is_err());
    }
}
