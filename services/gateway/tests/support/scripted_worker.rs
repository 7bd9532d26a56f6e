//! A scripted worker: plays the worker's part through real JetStream, so
//! tests of what the gateway alone decides control every event exactly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use protocol::{subjects, ChatRequest, Event, FinishReason};

/// What the scripted worker streams for every job.
#[derive(Clone)]
pub struct Script {
    pub chunks: Vec<String>,
    /// Pause after each chunk (a slow model).
    pub delay: Duration,
}

impl Script {
    pub fn words(words: &[&str]) -> Self {
        Self {
            chunks: words.iter().map(|w| w.to_string()).collect(),
            delay: Duration::ZERO,
        }
    }

    /// `chunks` numbered chunks, each followed by `delay`.
    pub fn numbered(chunks: usize, delay: Duration) -> Self {
        Self {
            chunks: (0..chunks).map(|i| format!("w{i} ")).collect(),
            delay,
        }
    }

    /// `chunks` chunks of `bytes` each, published at once: more than a
    /// socket's kernel buffers hold.
    pub fn flood(chunks: usize, bytes: usize) -> Self {
        let body = "x".repeat(bytes);
        Self {
            chunks: (0..chunks).map(|i| format!("{i}:{body}")).collect(),
            delay: Duration::ZERO,
        }
    }
}

/// Pulls jobs from the `workers` consumer, publishes the script's chunks and
/// a `done` to the session's events subject, finishes the message in the
/// session record, acks. Stops when dropped.
pub struct ScriptedWorker {
    task: tokio::task::JoinHandle<()>,
    /// Jobs acked so far.
    pub jobs: Arc<AtomicUsize>,
}

impl ScriptedWorker {
    pub(super) async fn start(js: jetstream::Context, script: Script) -> Self {
        let stream = js.get_stream(subjects::REQUESTS_STREAM).await.unwrap();
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_consumer(subjects::WORKERS_CONSUMER)
            .await
            .unwrap();
        let sessions = js.get_key_value(subjects::SESSIONS_BUCKET).await.unwrap();
        let jobs = Arc::new(AtomicUsize::new(0));
        let counter = jobs.clone();
        let task = tokio::spawn(async move {
            let mut messages = consumer.messages().await.unwrap();
            while let Some(Ok(job)) = messages.next().await {
                let request: ChatRequest = serde_json::from_slice(&job.payload).unwrap();
                let subject = subjects::events(request.session_id);
                let id = request.message_id;
                let chunks = script
                    .chunks
                    .iter()
                    .enumerate()
                    .map(|(index, text)| Event::Chunk {
                        message_id: id,
                        attempt: 1,
                        index: index as u32,
                        text: text.clone(),
                        published_at_us: None,
                    });
                let done = Event::Done {
                    message_id: id,
                    attempt: 1,
                    finish_reason: FinishReason::Stop,
                    usage: None,
                };
                for event in chunks.chain([done]) {
                    let ack = js.publish(subject.clone(), event.to_payload()).await;
                    ack.unwrap().await.unwrap();
                    if event.kind() == protocol::EventKind::Chunk && !script.delay.is_zero() {
                        tokio::time::sleep(script.delay).await;
                    }
                }
                protocol::sessions::update(&sessions, request.session_id, |record| {
                    Ok::<_, std::convert::Infallible>(record.finish(id))
                })
                .await
                .unwrap()
                .unwrap();
                job.ack().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        Self { task, jobs }
    }

    pub fn jobs(&self) -> usize {
        self.jobs.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
