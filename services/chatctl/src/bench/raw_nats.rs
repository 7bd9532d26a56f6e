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
