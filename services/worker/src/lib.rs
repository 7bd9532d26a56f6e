//! The AI worker: pulls chat jobs from the `CHAT_REQUESTS` work-queue (at
//! most `--concurrency` at once), streams the model's answer as events to
//! the session's subject, stores the finished turn and acks the job.
//!
//! [`spawn`] starts everything from a [`WorkerConfig`] and returns a
//! [`RunningWorker`]; `main` only parses flags and waits for a signal, so
//! tests run the very same worker in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod backends;
pub mod cancel;
pub mod chunk_window;
pub mod chunking;
pub mod config;
pub mod context;
pub mod dead_letter;
mod http;
mod job;
pub mod metrics;
pub mod publish;
mod queue;
pub mod queue_depth;
mod siblings;
mod turns;

pub use config::{BackendKind, WorkerConfig};

use backends::demo::{DemoBackend, DemoConfig};
use backends::openai::OpenAiBackend;
use backends::ModelBackend;
use context::JobContext;

/// How long, after the grace, jobs handed back get to send their nak.
const ABORT_WAIT: Duration = Duration::from_secs(5);
/// How long a stopping puller may take to see its last pull request expire.
const PULLER_WAIT: Duration = Duration::from_secs(2);

/// A started worker. Dropping it leaves its tasks running; call
/// [`RunningWorker::shutdown`] to stop it.
pub struct RunningWorker {
    node: String,
    metrics_addr: SocketAddr,
    client: async_nats::Client,
    grace: Duration,
    stop_pulling: CancellationToken,
    abort: CancellationToken,
    stop_background: CancellationToken,
    puller: JoinHandle<()>,
    jobs: TaskTracker,
    background: Vec<JoinHandle<()>>,
}

impl RunningWorker {
    /// Where `/metrics` and `/health` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Stops pulling, lets running jobs finish within the shutdown grace,
    /// hands the rest back to the queue at once (nak without delay, nothing
    /// published: the next attempt announces `restart`), then stops.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop_pulling.cancel();
        let deadline = tokio::time::Instant::now() + self.grace;
        let mut puller = self.puller;
        // The open pull request ends within `PULL_EXPIRES`; jobs it still
        // delivers are handed back by the puller itself.
        let puller_done = tokio::time::timeout_at(deadline, &mut puller).await.is_ok();
        if puller_done {
            self.jobs.close();
        }
        let jobs_done = puller_done
            && tokio::time::timeout_at(deadline, self.jobs.wait())
                .await
                .is_ok();
        if !jobs_done {
            // Hand jobs back only once no pull request of ours is open, or
            // the server would deliver them straight back to us.
            // (A finished puller must not be polled again.)
            if !puller_done
                && tokio::time::timeout(PULLER_WAIT, &mut puller)
                    .await
                    .is_err()
            {
                puller.abort();
            }
            self.jobs.close();
            tracing::info!(
                running = self.jobs.len(),
                "shutdown grace over; handing running jobs back"
            );
            self.abort.cancel();
            if tokio::time::timeout(ABORT_WAIT, self.jobs.wait())
                .await
                .is_err()
            {
                tracing::warn!("jobs did not stop in time");
            }
        }
        self.stop_background.cancel();
        for task in self.background {
            let _ = task.await;
        }
        self.client.flush().await.context("flushing NATS")?;
        tracing::info!(node = %self.node, "worker stopped");
        Ok(())
    }
}

fn backend(config: &WorkerConfig) -> anyhow::Result<Arc<dyn ModelBackend>> {
    Ok(match config.backend {
        BackendKind::Demo => Arc::new(DemoBackend::new(DemoConfig {
            tokens_per_sec: config.demo_tokens_per_sec,
            first_token: Duration::from_millis(config.demo_first_token_ms),
            answer_tokens: config.demo_answer_tokens,
            reasoning_tokens: config.demo_reasoning_tokens,
            models: config.demo_models.clone(),
            stamp_tokens: config.demo_stamp_tokens,
        })),
        BackendKind::Openai => Arc::new(OpenAiBackend::new(config.openai.clone())?),
    })
}

/// Connects, verifies the layout, and starts pulling jobs.
pub async fn spawn(config: WorkerConfig) -> anyhow::Result<RunningWorker> {
    let metrics_handle = telemetry::install_metrics();
    let backend = backend(&config)?;
    let (options, connection) = protocol::connect::options(&config.node);
    let options = config
        .nats_access
        .apply(protocol::access::Role::Worker, options)?;
    let client = options
        .connect(protocol::connect::seed_list(&config.nats_url))
        .await
        .with_context(|| format!("connecting to {}", config.nats_url))?;
    let js = jetstream::new(client.clone());
    // Operations own the layout (`chatctl layout apply`): a service only
    // reads it, and refuses to start on one that differs from its flags.
    let layout =
        protocol::setup::verify_when_ready(&js, &config.layout, protocol::setup::SETUP_PATIENCE)
            .await?;
    let consumer = protocol::setup::workers_consumer(&layout).await?;
    let depth_consumer = consumer.clone();
    let listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("binding {}", config.metrics_listen))?;
    let metrics_addr = listener.local_addr()?;

    let stop_pulling = CancellationToken::new();
    let abort = CancellationToken::new();
    let stop_background = CancellationToken::new();
    let ctx = Arc::new(JobContext {
        js,
        connection,
        layout,
        layout_config: config.layout.clone(),
        backend,
        chunk_window: Arc::new(config.chunk_window()),
        chunk_max_bytes: config.chunk_max_bytes,
        cancels: {
            let registry = cancel::CancelRegistry::default();
            registry.set_node(&config.node);
            registry
        },
        abort: abort.clone(),
        node: config.node.clone(),
        admit_pause: Duration::from_millis(config.test_admit_pause_ms),
        claim_pause: Duration::from_millis(config.test_claim_pause_ms),
    });

    // Cancels and dead letters are listened for before the first job is pulled.
    let cancels =
        cancel::listen(client.clone(), ctx.cancels.clone(), stop_background.clone()).await?;
    let advisories =
        dead_letter::listen(ctx.clone(), client.clone(), stop_background.clone()).await?;
    client.flush().await?;
    let http = http::serve(
        listener,
        metrics_handle,
        config.node.clone(),
        client.clone(),
        stop_background.clone(),
    );

    let depth = queue_depth::watch(
        depth_consumer,
        queue_depth::POLL_EVERY,
        stop_background.clone(),
    );

    let jobs = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let puller = tokio::spawn(queue::pull(
        ctx,
        consumer,
        slots,
        jobs.clone(),
        stop_pulling.clone(),
    ));
    tracing::info!(
        node = %config.node,
        backend = config.backend.as_str(),
        concurrency = config.concurrency,
        %metrics_addr,
        "worker started"
    );
    Ok(RunningWorker {
        grace: config.shutdown_grace(),
        node: config.node,
        metrics_addr,
        client,
        stop_pulling,
        abort,
        stop_background,
        puller,
        jobs,
        background: vec![cancels, advisories, http, depth],
    })
}
