//! The physical limit on this machine: plain NATS and JetStream publishing on
//! the same server the system uses, in the same run, so the end-to-end rate
//! can be read as a fraction of what the server itself can store.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::StreamExt;
use protocol::access::{NatsAccess, Role};
use protocol::subjects;
use tokio::sync::mpsc;

/// Core NATS publish → subscribe, one process.
#[derive(Clone, Copy, Debug)]
pub struct CoreRate {
    pub sent: u64,
    pub received: u64,
    pub per_sec: f64,
}

/// The NATS the raw measures run on, and the ops access to it.
#[derive(Clone, Copy, Debug)]
pub struct NatsTarget<'a> {
    pub url: &'a str,
    pub access: &'a NatsAccess,
}

impl<'a> NatsTarget<'a> {
    /// The NATS a bench attached to a running stack (`--url`) was given.
    pub fn of_args(args: &'a super::BenchArgs) -> Self {
        Self {
            url: &args.nats_url,
            access: &args.nats_access,
        }
    }
}

/// Publishes `messages` of `payload_bytes` on a core subject with a
/// subscriber in the same process; the rate is messages received per second
/// from the first publish to the last receive. A subscriber that falls
/// behind loses messages (core NATS is at-most-once): `received` says how many
/// arrived.
pub async fn core_pub_sub(
    nats: &NatsTarget<'_>,
    messages: u64,
    payload_bytes: usize,
) -> anyhow::Result<CoreRate> {
    let NatsTarget {
        url: nats_url,
        access,
    } = *nats;
    let capacity = usize::try_from(messages).unwrap_or(usize::MAX).max(1024);
    let subscriber = access
        .apply(Role::Ops, async_nats::ConnectOptions::new())?
        .subscription_capacity(capacity.min(4 << 20))
        .connect(nats_url)
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    let publisher = access
        .apply(Role::Ops, async_nats::ConnectOptions::new())?
        .connect(nats_url)
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    let mut sub = subscriber.subscribe(subjects::BENCH_CORE_SUBJECT).await?;
    subscriber.flush().await?;
    let payload = Bytes::from(vec![b'x'; payload_bytes]);
    let receiving = tokio::spawn(async move {
        let mut received = 0u64;
        let mut last = Instant::now();
        // A quiet second after the publisher is done means the rest was dropped.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            received += 1;
            last = Instant::now();
            if received == messages {
                break;
            }
        }
        (received, last)
    });
    let start = Instant::now();
    for _ in 0..messages {
        publisher
            .publish(subjects::BENCH_CORE_SUBJECT, payload.clone())
            .await?;
    }
    publisher.flush().await?;
    let (received, last) = receiving.await?;
    let elapsed = last.saturating_duration_since(start).as_secs_f64();
    if received == 0 || elapsed <= 0.0 {
        bail!("core NATS: no message came back");
    }
    Ok(CoreRate {
        sent: messages,
        received,
        per_sec: received as f64 / elapsed,
    })
}

/// JetStream publishes into a scratch file-storage stream, pipelined: the
/// publishing loop never waits for an ack; another task awaits them in
/// order with at most `window` outstanding (as the worker publishes chunks).
/// The stream is deleted afterwards.
pub async fn jetstream_pipelined(
    nats: &NatsTarget<'_>,
    messages: u64,
    payload_bytes: usize,
    window: usize,
) -> anyhow::Result<f64> {
    let NatsTarget {
        url: nats_url,
        access,
    } = *nats;
    let client = access
        .apply(Role::Ops, async_nats::ConnectOptions::new())?
        .connect(nats_url)
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    let js = jetstream::new(client);
    // A stream left by an interrupted run would skew nothing, but start clean.
    let _ = js.delete_stream(subjects::BENCH_STREAM).await;
    js.create_stream(stream::Config {
        name: subjects::BENCH_STREAM.into(),
        subjects: vec![subjects::BENCH_STREAM_SUBJECT.into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("creating the bench stream")?;
    let result = publish_pipelined(&js, messages, payload_bytes, window).await;
    let deleted = js.delete_stream(subjects::BENCH_STREAM).await;
    let rate = result?;
    deleted.context("deleting the bench stream")?;
    Ok(rate)
}

async fn publish_pipelined(
    js: &jetstream::Context,
    messages: u64,
    payload_bytes: usize,
    window: usize,
) -> anyhow::Result<f64> {
    let payload = Bytes::from(vec![b'x'; payload_bytes]);
    let (tx, mut rx) = mpsc::channel::<jetstream::context::PublishAckFuture>(window.max(1));
    let acks = tokio::spawn(async move {
        let mut acked = 0u64;
        while let Some(ack) = rx.recv().await {
            ack.await?;
            acked += 1;
        }
        Ok::<_, anyhow::Error>(acked)
    });
    let start = Instant::now();
    for _ in 0..messages {
        let ack = js
            .publish(subjects::BENCH_STREAM_SUBJECT, payload.clone())
            .await?;
        if tx.send(ack).await.is_err() {
            break; // the ack task failed: its error is returned below
        }
    }
    drop(tx);
    let acked = acks.await??;
    let elapsed = start.elapsed().as_secs_f64();
    if acked != messages {
        bail!("JetStream acked {acked} of {messages} publishes");
    }
    Ok(acked as f64 / elapsed.max(1e-9))
}

/// Unbatched JetStream publishes at a paced load's rate, as the workers
/// send chunks: `streams` subjects, `per_sec` messages a second in all from
/// `publishers` connections, each publish on its own timer tick with its
/// ack awaited aside. With `republish`, the stream republishes every
/// message to a subscriber, as `CHAT_EVENTS` does to the gateways.
#[derive(Clone, Copy, Debug)]
pub struct PacedPublishing {
    pub streams: usize,
    pub per_sec: f64,
    pub publishers: usize,
    pub payload_bytes: usize,
    pub republish: bool,
}

/// What nats-server spent on [`PacedPublishing`] over the measured window.
#[derive(Clone, Copy, Debug)]
pub struct PacedRaw {
    /// Messages acknowledged in the window.
    pub acked: u64,
    /// Republished copies received in the window (0 without republish).
    pub received: u64,
    pub nats_server_us_per_message: f64,
}

/// Runs `load` on a scratch stream for `window` after a second of warm-up;
/// the stream is deleted afterwards. nats-server's CPU comes from
/// [`CpuSnapshot::take`] (the bench's own stack), so nothing else may load
/// it meanwhile.
pub async fn jetstream_paced(
    nats: &NatsTarget<'_>,
    load: PacedPublishing,
    window: Duration,
) -> anyhow::Result<PacedRaw> {
    let connect = || async {
        nats.access
            .apply(Role::Ops, async_nats::ConnectOptions::new())?
            .connect(nats.url)
            .await
            .with_context(|| format!("connecting to {}", nats.url))
    };
    let js = jetstream::new(connect().await?);
    let _ = js.delete_stream(subjects::BENCH_STREAM).await;
    js.create_stream(stream::Config {
        name: subjects::BENCH_STREAM.into(),
        subjects: vec![format!("{}.*", subjects::BENCH_PACED_PREFIX)],
        storage: stream::StorageType::File,
        republish: load.republish.then(|| stream::Republish {
            source: format!("{}.>", subjects::BENCH_PACED_PREFIX),
            destination: format!("{}.>", subjects::BENCH_LIVE_PREFIX),
            headers_only: false,
        }),
        ..Default::default()
    })
    .await
    .context("creating the bench stream")?;
    let result = publish_paced(load, window, connect).await;
    let deleted = js.delete_stream(subjects::BENCH_STREAM).await;
    let raw = result?;
    deleted.context("deleting the bench stream")?;
    Ok(raw)
}

async fn publish_paced<F, Fut>(
    load: PacedPublishing,
    window: Duration,
    connect: F,
) -> anyhow::Result<PacedRaw>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<async_nats::Client>>,
{
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    if load.republish {
        let subscriber = connect().await?;
        let mut live = subscriber
            .subscribe(format!("{}.>", subjects::BENCH_LIVE_PREFIX))
            .await?;
        subscriber.flush().await?;
        let (received, stop) = (received.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), live.next()).await {
                    Ok(Some(_)) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
        }));
    }
    let publishers = load.publishers.max(1);
    let per_publisher = (load.per_sec / publishers as f64).max(1.0);
    let payload = Bytes::from(vec![b'x'; load.payload_bytes]);
    for p in 0..publishers {
        let js = jetstream::new(connect().await?);
        let (stop, acked, failures, payload) = (
            stop.clone(),
            acked.clone(),
            failures.clone(),
            payload.clone(),
        );
        // This publisher's streams: every `publishers`-th one.
        let subjects: Vec<String> = (p..load.streams.max(1))
            .step_by(publishers)
            .map(|s| format!("{}.{s}", subjects::BENCH_PACED_PREFIX))
            .collect();
        tasks.push(tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel::<jetstream::context::PublishAckFuture>();
            let acks = {
                let (acked, failures) = (acked.clone(), failures.clone());
                tokio::spawn(async move {
                    while let Some(ack) = rx.recv().await {
                        match ack.await {
                            Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            };
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_publisher));
            let mut next = subjects.iter().cycle();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let Some(subject) = next.next() else { break };
                match js.publish(subject.clone(), payload.clone()).await {
                    Ok(ack) => {
                        let _ = tx.send(ack);
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            drop(tx);
            let _ = acks.await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu_before, acked_before, received_before) = (
        super::cpu::CpuSnapshot::take(),
        acked.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    );
    tokio::time::sleep(window).await;
    let cpu = super::cpu::CpuSnapshot::take().since(&cpu_before);
    let in_window = acked.load(Ordering::Relaxed) - acked_before;
    let received_in_window = received.load(Ordering::Relaxed) - received_before;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let failed = failures.load(Ordering::Relaxed);
    if in_window == 0 || failed > 0 {
        bail!("paced JetStream publishing: {in_window} acked in the window, {failed} failed");
    }
    Ok(PacedRaw {
        acked: in_window,
        received: received_in_window,
        nats_server_us_per_message: cpu.get("nats-server").copied().unwrap_or(0.0) * 1e6
            / in_window as f64,
    })
}
