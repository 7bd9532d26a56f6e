//! The physical limit on this machine: plain NATS and JetStream publishing on
//! the same server the system uses, in the same run, so the end-to-end rate
//! can be read as a fraction of what the server itself can store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    let spread = Spread {
        subjects: 1,
        republish: false,
    };
    let run = pipelined(nats, messages, payload_bytes, window, spread).await?;
    Ok(run.per_sec)
}

/// Where pipelined publishes go: how many subjects they cycle through, and
/// whether the stream republishes each to a subscriber.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub subjects: usize,
    pub republish: bool,
}

/// A pipelined run: publishes acked a second, and republished copies the
/// subscriber received by the time the last ack came.
#[derive(Clone, Copy, Debug)]
pub struct Pipelined {
    pub per_sec: f64,
    pub received: u64,
}

/// [`jetstream_pipelined`] spread over `spread.subjects` subjects and, with
/// `spread.republish`, republished to a subscriber in the same process: the
/// raw shape of the end-to-end run (one subject per session, `CHAT_EVENTS`
/// republishing every event to the gateways), without the system.
pub async fn pipelined(
    nats: &NatsTarget<'_>,
    messages: u64,
    payload_bytes: usize,
    window: usize,
    spread: Spread,
) -> anyhow::Result<Pipelined> {
    let NatsTarget {
        url: nats_url,
        access,
    } = *nats;
    let client = access
        .apply(Role::Ops, async_nats::ConnectOptions::new())?
        .connect(nats_url)
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    let js = jetstream::new(client.clone());
    // A stream left by an interrupted run would skew nothing, but start clean.
    let _ = js.delete_stream(subjects::BENCH_STREAM).await;
    let (stream_subject, targets) = if spread.subjects <= 1 && !spread.republish {
        (
            subjects::BENCH_STREAM_SUBJECT.to_string(),
            vec![subjects::BENCH_STREAM_SUBJECT.to_string()],
        )
    } else {
        (
            format!("{}.*", subjects::BENCH_PACED_PREFIX),
            (0..spread.subjects.max(1))
                .map(|s| format!("{}.{s}", subjects::BENCH_PACED_PREFIX))
                .collect(),
        )
    };
    js.create_stream(stream::Config {
        name: subjects::BENCH_STREAM.into(),
        subjects: vec![stream_subject],
        storage: stream::StorageType::File,
        republish: spread.republish.then(|| stream::Republish {
            source: format!("{}.>", subjects::BENCH_PACED_PREFIX),
            destination: format!("{}.>", subjects::BENCH_LIVE_PREFIX),
            headers_only: false,
        }),
        ..Default::default()
    })
    .await
    .context("creating the bench stream")?;
    let received = Arc::new(AtomicU64::new(0));
    let subscriber = if spread.republish {
        let mut live = client
            .subscribe(format!("{}.>", subjects::BENCH_LIVE_PREFIX))
            .await?;
        client.flush().await?;
        let received = received.clone();
        Some(tokio::spawn(async move {
            while live.next().await.is_some() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        }))
    } else {
        None
    };
    let result = publish_pipelined(&js, &targets, messages, payload_bytes, window).await;
    if let Some(subscriber) = subscriber {
        subscriber.abort();
    }
    let deleted = js.delete_stream(subjects::BENCH_STREAM).await;
    let per_sec = result?;
    deleted.context("deleting the bench stream")?;
    Ok(Pipelined {
        per_sec,
        received: received.load(Ordering::Relaxed),
    })
}

async fn publish_pipelined(
    js: &jetstream::Context,
    targets: &[String],
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
    for subject in targets.iter().cycle().take(messages as usize) {
        let ack = js.publish(subject.clone(), payload.clone()).await?;
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

/// JetStream publishes at a paced load's rate, as the workers send chunks:
/// `streams` subjects, `per_sec` messages a second in all from `publishers`
/// connections. With `republish`, the stream republishes every message to a
/// subscriber, as `CHAT_EVENTS` does to the gateways.
#[derive(Clone, Copy, Debug)]
pub struct PacedPublishing {
    pub streams: usize,
    pub per_sec: f64,
    pub publishers: usize,
    pub payload_bytes: usize,
    pub republish: bool,
    /// Each publish asks for its ack (awaited aside). Without, the messages
    /// are plain NATS publishes the stream stores and answers nothing: the
    /// floor of any scheme that acks many messages at once (fast-ingest
    /// batches' flow acks included).
    pub acked: bool,
    /// Zero: each publish on its own timer tick (unbatched, as a chunk
    /// travels). Otherwise the publishes due are sent back to back every
    /// `gather`: what holding chunks for a shared tick would give.
    pub gather: Duration,
}

impl PacedPublishing {
    /// Unbatched, each publish acked: as the workers' chunks travel.
    pub fn unbatched(
        streams: usize,
        per_sec: f64,
        publishers: usize,
        payload_bytes: usize,
    ) -> Self {
        Self {
            streams,
            per_sec,
            publishers,
            payload_bytes,
            republish: false,
            acked: true,
            gather: Duration::ZERO,
        }
    }
}

/// What nats-server spent on [`PacedPublishing`] over the measured window.
#[derive(Clone, Copy, Debug)]
pub struct PacedRaw {
    /// Messages stored in the window (acknowledged; or, unacked, sent and
    /// found in the stream afterwards).
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
    use std::sync::atomic::AtomicBool;

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
    let mut clients = Vec::new();
    for p in 0..publishers {
        let client = connect().await?;
        clients.push(client.clone());
        let js = jetstream::new(client.clone());
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
            let period = if load.gather.is_zero() {
                Duration::from_secs_f64(1.0 / per_publisher)
            } else {
                load.gather
            };
            let per_tick = per_publisher * period.as_secs_f64();
            let mut tick = tokio::time::interval(period);
            let mut next = subjects.iter().cycle();
            let mut owed = 0.0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                owed += per_tick;
                while owed >= 1.0 {
                    owed -= 1.0;
                    let Some(subject) = next.next() else { break };
                    if !load.acked {
                        match client.publish(subject.clone(), payload.clone()).await {
                            Ok(()) => acked.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                        };
                        continue;
                    }
                    match js.publish(subject.clone(), payload.clone()).await {
                        Ok(ack) => {
                            let _ = tx.send(ack);
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
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
    if !load.acked {
        stored_in_full(&clients, acked.load(Ordering::Relaxed)).await?;
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

/// Unacked publishes are counted as sent: the scratch stream must hold
/// every one of them once the publishers' connections are flushed.
async fn stored_in_full(clients: &[async_nats::Client], sent: u64) -> anyhow::Result<()> {
    for client in clients {
        client.flush().await?;
    }
    let Some(client) = clients.first() else {
        return Ok(());
    };
    let mut bench_stream = jetstream::new(client.clone())
        .get_stream(subjects::BENCH_STREAM)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stored = bench_stream.info().await?.state.messages;
        if stored == sent {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("paced JetStream publishing without acks: {sent} sent, {stored} stored");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
