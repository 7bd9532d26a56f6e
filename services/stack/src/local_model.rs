//! A real language model on the CPU for tests: llama-cpp-python's
//! OpenAI-compatible server serving SmolLM2-135M, installed and run by
//! `scripts/local-model.sh` (the script `just up --model local` uses), on a
//! free loopback port, killed when the [`LocalModel`] drops.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use stack::{LocalModel, Stack, StackOptions};
//! let model = LocalModel::start().await?;
//! let stack = Stack::start(StackOptions {
//!     env: model.worker_env(),
//!     ..Default::default()
//! })
//! .await?;
//! # Ok(()) }
//! ```

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::http::http_get;
use crate::ports::free_port;
use crate::process::log_tail;
use crate::project::project_dir;

/// How long the server may take to load the model and answer `/v1/models`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The model server process. Dropping it kills the server and deletes its
/// log (kept, and its path printed, when a test is panicking).
pub struct LocalModel {
    child: Option<Child>,
    port: u16,
    name: String,
    log: PathBuf,
    log_dir: Option<tempfile::TempDir>,
}

impl LocalModel {
    /// Installs the server if it is not yet (`scripts/local-model.sh
    /// install`: the first time builds llama-cpp-python from source, about
    /// ten minutes; later a check of a second), starts it and returns once
    /// `GET /v1/models` answers 200. Fails with the script's message when
    /// it cannot be built here (no compiler, no PyPI).
    pub async fn start() -> anyhow::Result<Self> {
        let script = project_dir().join("scripts/local-model.sh");
        let output = tokio::task::spawn_blocking({
            let script = script.clone();
            move || {
                Command::new(&script)
                    .arg("install")
                    .stdin(Stdio::null())
                    .output()
            }
        })
        .await?
        .with_context(|| format!("running {} install", script.display()))?;
        if !output.status.success() {
            bail!(
                "the local model server could not be installed ({} install: {}):\n{}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let name = script_line(&script, "name")?;
        let log_dir = tempfile::Builder::new().prefix("local-model-").tempdir()?;
        let log = log_dir.path().join("local-model.log");
        // A port free a moment ago may be taken before the server binds it:
        // then it exits at once, and a fresh port is tried.
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let child = Command::new(&script)
                .args(["serve", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::from(out.try_clone()?))
                .stderr(Stdio::from(out))
                .spawn()
                .with_context(|| format!("starting {} serve", script.display()))?;
            let mut model = LocalModel {
                child: Some(child),
                port,
                name: name.clone(),
                log: log.clone(),
                log_dir: None,
            };
            match model.wait_ready().await {
                Ok(()) => {
                    model.log_dir = Some(log_dir);
                    return Ok(model);
                }
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(e) => Err(e),
            None => bail!("the local model server did not start"),
        }
    }

    /// `http://127.0.0.1:PORT`: what `OPENAI_BASE_URL` is set to.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The name the server serves the model as (`OPENAI_MODEL`).
    pub fn model(&self) -> &str {
        &self.name
    }

    /// The environment that points workers at this server:
    /// `WORKER_BACKEND=openai`, `OPENAI_BASE_URL`, `OPENAI_MODEL`.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        vec![
            ("WORKER_BACKEND".into(), "openai".into()),
            ("OPENAI_BASE_URL".into(), self.base_url()),
            ("OPENAI_MODEL".into(), self.name.clone()),
        ]
    }

    /// The server's log so far (its last lines), for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// The server's whole log so far (uvicorn logs each request in it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/v1/models", self.base_url());
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((200, _)) = http_get(&url).await {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                bail!(
                    "the local model server exited ({status}) before answering {url}; its log:\n{}",
                    self.log_tail()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill();
                bail!(
                    "the local model server did not answer {url} within {READY_TIMEOUT:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalModel {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            if let Some(dir) = self.log_dir.take() {
                eprintln!("local model: log kept in {}", dir.keep().display());
            }
        }
    }
}

/// The one line `scripts/local-model.sh <command>` prints.
fn script_line(script: &std::path::Path, command: &str) -> anyhow::Result<String> {
    let output = Command::new(script)
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} {command}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} {command} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
