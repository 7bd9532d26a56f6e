//! Pulling jobs and running one job's lifecycle (PREAMBLE "Semantics
//! agreed"): cancel flag and finished checks, `restart` on a redelivery,
//! chunks, the terminal event, the history turn, the session record, and
//! only then the ack. A job is acked only once everything it owes the
//! session is stored; on a passing failure it is handed back (nak).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, message::PublishMessage, AckKind};
use futures::StreamExt;
use protocol::records::{Turn, TurnStatus};
use protocol::setup::{Layout, LayoutConfig};
use protocol::{sessions, stored, subjects, ChatRequest, ErrorCode, Event, FinishReason, Usage};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backends::{BackendError, Generation, ModelBackend, ModelOutput};
use crate::cancel::{self, CancelRegistry};
use crate::chunking::Chunker;
use crate::dead_letter;
use crate::metrics::{self, Outcome};
use crate::publish::{EventPublisher, PublishFailed};

/// How long one pull request waits for jobs. Short, so a stopping worker
/// has no request outstanding for long; idle pulls cost one small request.
const PULL_EXPIRES: Duration = Duration::from_millis(500);
/// Pause after a failed pull (NATS unreachable) before the next.
const PULL_RETRY: Duration = Duration::from_millis(250);

/// What every job of this worker shares.
pub struct JobContext {
    pub js: jetstream::Context,
    pub layout: Layout,
    pub layout_config: LayoutConfig,
    pub backend: Arc<dyn ModelBackend>,
    pub chunk_window: Duration,
    pub chunk_max_bytes: usize,
    pub cancels: CancelRegistry,
    /// Fires when the shutdown grace is over: running jobs are handed back.
    pub abort: CancellationToken,
    /// This worker's name, on every job span.
    pub node: String,
}

/// Pulls jobs while there are free slots, until `stop` fires. Only as many
/// jobs are requested as can start at once: a prefetched job would sit with
/// its `ack_wait` ticking.
pub async fn pull(
    ctx: Arc<JobContext>,
    consumer: PullConsumer,
    slots: Arc<Semaphore>,
    jobs: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut messages = match batch {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, "pulling jobs failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(PULL_RETRY) => continue,
                }
            }
        };
        // The request stays open until it expires or is filled. A job that
        // arrives after a stop still runs here, inside the shutdown grace:
        // handing it back would cost it one of its `max_deliver` attempts
        // (a rolling restart of every worker could exhaust them).
        while let Some(next) = messages.next().await {
            let message = match next {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!(error = %e, "pull request ended");
                    break;
                }
            };
            let Some(permit) = permits.pop() else {
                // More than was asked for: cannot happen, but never hold it.
                hand_back(&message, None).await;
                continue;
            };
            let ctx = ctx.clone();
            jobs.spawn(async move {
                run(ctx, message).await;
                drop(permit);
            });
        }
    }
}

async fn hand_back(message: &jetstream::Message, delay: Option<Duration>) {
    if let Err(e) = message.ack_with(AckKind::Nak(delay)).await {
        tracing::warn!(error = %e, "nak failed; the job comes back after ack_wait");
    }
}

async fn term(message: &jetstream::Message) {
    if let Err(e) = message.ack_with(AckKind::Term).await {
        tracing::warn!(error = %e, "term failed");
    }
}

async fn ack(message: &jetstream::Message) {
    if let Err(e) = message.double_ack().await {
        tracing::warn!(error = %e, "ack failed; the job may be redelivered and recognised as finished");
    }
}

/// Runs one pulled job to its end.
async fn run(ctx: Arc<JobContext>, message: jetstream::Message) {
    let _in_flight = metrics::InFlight::start();
    let started = Instant::now();
    let (attempt, stream_seq) = match message.info() {
        Ok(info) => (
            u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
            info.stream_sequence,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "a job without JetStream metadata; dropped");
            term(&message).await;
            return;
        }
    };
    let request: ChatRequest = match serde_json::from_slice(&message.payload) {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(stream_seq, error = %e, "unreadable job; dropped");
            term(&message).await;
            metrics::job_finished(Outcome::Failed);
            return;
        }
    };
    // One span per attempt; a redelivery is a new child of the same
    // gateway span (the `traceparent` travels with the job). No prompt text.
    let span = tracing::info_span!(
        "job",
        otel.name = "chat.job",
        messaging.system = "nats",
        messaging.destination.name = subjects::REQUESTS_STREAM,
        message_id = %request.message_id,
        session_id = %request.session_id,
        attempt,
        node = %ctx.node,
        model = request.model.as_deref().unwrap_or("default"),
        chunks = tracing::field::Empty,
        finish_reason = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    telemetry::trace_context::adopt(&span, message.headers.as_ref());
    let job = Job {
        ctx,
        message,
        request,
        attempt: AtomicU32::new(attempt),
        started,
    };
    job.run().instrument(span).await;
}

/// How a generation stopped.
enum Ending {
    Finished {
        finish_reason: FinishReason,
        usage: Option<Usage>,
    },
    Cancelled,
    Backend(BackendError),
    Publish(PublishFailed),
    /// The shutdown grace is over.
    Aborted,
    /// Another worker took the job over (a redelivery while this one still
    /// ran): stop without a word; the job is theirs.
    Superseded,
}

/// What a generation produced.
struct Produced {
    ending: Ending,
    text: String,
    chunks: u32,
    tokens: u64,
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Publish(#[from] PublishFailed),
}

/// What a job did, for its one log line.
struct Report {
    outcome: Option<Outcome>,
    detail: &'static str,
    chunks: u32,
    tokens: u64,
}

impl Report {
    fn new(outcome: Outcome, detail: &'static str) -> Self {
        Self {
            outcome: Some(outcome),
            detail,
            chunks: 0,
            tokens: 0,
        }
    }
}

struct Job {
    ctx: Arc<JobContext>,
    message: jetstream::Message,
    request: ChatRequest,
    /// The delivery count, raised when the stream shows an earlier run of
    /// this message that the count does not (see `Job::process`).
    attempt: AtomicU32,
    started: Instant,
}

impl Job {
    fn attempt(&self) -> u32 {
        self.attempt.load(Ordering::Relaxed)
    }

    /// A delivery count can undercount: a job handed back while NATS
    /// restarted may come back as delivery 1 again. If the session's last
    /// stored event is an unfinished run of this message with an attempt
    /// number at or above ours, this run is the next one (and announces
    /// `restart`), so a client never sees one attempt's chunks twice.
    fn continue_after(&self, last: Option<&Event>) {
        let id = self.message_id();
        let earlier = match last {
            Some(Event::Chunk {
                message_id,
                attempt,
                ..
            })
            | Some(Event::Restart {
                message_id,
                attempt,
            }) if *message_id == id => *attempt,
            _ => return,
        };
        if earlier >= self.attempt() {
            self.attempt.store(earlier + 1, Ordering::Relaxed);
        }
    }
    async fn run(self) {
        let report = match self.process().await {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(error = %e, "job attempt failed; handing it back");
                hand_back(&self.message, Some(self.retry_delay())).await;
                Report::new(Outcome::Redelivered, "internal error")
            }
        };
        let elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let span = tracing::Span::current();
        span.record("chunks", report.chunks);
        if let Some(outcome) = report.outcome {
            span.record("outcome", outcome.as_str());
        }
        match report.outcome {
            Some(outcome) => {
                metrics::job_finished(outcome);
                tracing::info!(
                    outcome = outcome.as_str(),
                    detail = report.detail,
                    chunks = report.chunks,
                    tokens = report.tokens,
                    elapsed_ms,
                    "job finished"
                );
            }
            None => tracing::info!(detail = report.detail, elapsed_ms, "job skipped"),
        }
    }

    fn message_id(&self) -> protocol::MessageId {
        self.request.message_id
    }

    /// A growing pause before a job that failed for a passing reason is tried again.
    fn retry_delay(&self) -> Duration {
        let exp = self.attempt().saturating_sub(1).min(6);
        (Duration::from_millis(500) * (1 << exp)).min(Duration::from_secs(30))
    }

    /// Whether this message already has its answer: the session record says
    /// so, or (the record's update may have been lost when NATS went away
    /// between the two writes) the session's last history turn is it.
    async fn already_answered(&self) -> bool {
        let ctx = &self.ctx;
        let id = self.message_id();
        let subject = subjects::history(self.request.session_id);
        // Both reads at once: they sit before the first chunk.
        let (record, last_turn) = tokio::join!(
            sessions::load(&ctx.layout.sessions, self.request.session_id),
            ctx.layout.history.direct_get_last_for_subject(subject),
        );
        match record {
            Ok(Some(v)) if v.record.is_finished(id) => return true,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the session record"),
        }
        match last_turn {
            Ok(last) => serde_json::from_slice::<Turn>(&last.payload)
                .is_ok_and(|turn| turn.message_id == id),
            Err(_) => false,
        }
    }

    /// The finished turns the model gets as context (none if it takes none).
    async fn context(&self) -> Vec<Turn> {
        let ctx = &self.ctx;
        let turns = ctx.backend.context_turns();
        if turns == 0 {
            return Vec::new();
        }
        let client = ctx.js.client();
        match stored::read_turns(&client, &ctx.layout.history, self.request.session_id, turns).await
        {
            Ok(history) => history,
            Err(e) => {
                // Context is a nicety; an answer without it beats none.
                tracing::warn!(error = %e, "reading history for context");
                Vec::new()
            }
        }
    }

    async fn process(&self) -> Result<Report, JobError> {
        let ctx = &self.ctx;
        let id = self.message_id();
        let guard = ctx.cancels.register(id);

        // What decides whether and how this job runs, read at once: every
        // round trip here is added to the time to the first chunk.
        let (answered, cancel_flagged, history, last_event) = tokio::join!(
            self.already_answered(),
            cancel::flag_set(&ctx.layout.sessions, id),
            self.context(),
            ctx.layout
                .events
                .direct_get_last_for_subject(subjects::events(self.request.session_id)),
        );
        let last_event = last_event
            .ok()
            .and_then(|m| serde_json::from_slice::<Event>(&m.payload).ok());
        self.continue_after(last_event.as_ref());
        if answered {
            ack(&self.message).await;
            return Ok(Report {
                outcome: None,
                detail: "already answered",
                chunks: 0,
                tokens: 0,
            });
        }
        // Tell any other worker still running this message (it lost its
        // lease without knowing) to stop: the job is ours now.
        let claim = guard.claim_notice().to_payload();
        if let Err(e) = ctx
            .js
            .client()
            .publish(subjects::cancel(self.request.session_id), claim)
            .await
        {
            tracing::debug!(error = %e, "announcing the claim");
        }

        if guard.token().is_cancelled() || cancel_flagged {
            publish_now(
                ctx,
                self.request.session_id,
                &Event::Cancelled { message_id: id },
            )
            .await?;
            self.record_turn(TurnStatus::Cancelled, String::new(), None, None)
                .await?;
            ack(&self.message).await;
            cancel::clear_flag(&ctx.layout.sessions, id).await;
            return Ok(Report::new(Outcome::Cancelled, "cancelled before start"));
        }

        if let Some(model) = self.request.model.as_deref() {
            if !ctx.backend.serves_model(model) {
                let event = Event::Error {
                    message_id: Some(id),
                    code: ErrorCode::BadRequest,
                    message: format!("this service does not serve the model {model:?}"),
                };
                publish_now(ctx, self.request.session_id, &event).await?;
                self.record_turn(TurnStatus::Failed, String::new(), None, None)
                    .await?;
                term(&self.message).await;
                return Ok(Report::new(Outcome::Failed, "unknown model"));
            }
        }

        let mut publisher =
            EventPublisher::start(ctx.js.clone(), subjects::events(self.request.session_id));
        if self.attempt() > 1 {
            publisher
                .publish(&Event::Restart {
                    message_id: id,
                    attempt: self.attempt(),
                })
                .await?;
        }
        let generation_started = Instant::now();
        let model_span = tracing::info_span!(
            "model",
            otel.name = "chat.model",
            backend = ctx.backend.name(),
            model = self.request.model.as_deref().unwrap_or("default"),
            attempt = self.attempt(),
            tokens = tracing::field::Empty,
            finish_reason = tracing::field::Empty,
        );
        let produced = self
            .generate(
                &mut publisher,
                guard.token(),
                guard.superseded(),
                Generation {
                    prompt: self.request.content.clone(),
                    history,
                    model: self.request.model.clone(),
                },
            )
            .instrument(model_span.clone())
            .await;
        model_span.record("tokens", produced.tokens);
        if let Ending::Finished { finish_reason, .. } = &produced.ending {
            let reason = finish_reason_label(finish_reason);
            model_span.record("finish_reason", reason);
            tracing::Span::current().record("finish_reason", reason);
        }
        metrics::generation(
            generation_started.elapsed(),
            ctx.backend.name(),
            produced.tokens,
        );
        let Produced {
            ending,
            text,
            chunks,
            tokens,
        } = produced;
        let report = |outcome, detail| Report {
            outcome: Some(outcome),
            detail,
            chunks,
            tokens,
        };

        match ending {
            Ending::Finished {
                finish_reason,
                usage,
            } => {
                publisher
                    .finish_with(
                        &Event::Done {
                            message_id: id,
                            attempt: self.attempt(),
                            finish_reason: finish_reason.clone(),
                            usage,
                        },
                        release_slot(ctx, &self.request),
                    )
                    .await?;
                self.record_turn(TurnStatus::Done, text, Some(finish_reason), usage)
                    .await?;
                ack(&self.message).await;
                if guard.token().is_cancelled() {
                    // A cancel that came after the answer was complete: a
                    // no-op, but its flag is ours to remove.
                    cancel::clear_flag(&ctx.layout.sessions, id).await;
                }
                Ok(report(Outcome::Done, "answered"))
            }
            Ending::Cancelled => {
                publisher
                    .finish_with(
                        &Event::Cancelled { message_id: id },
                        release_slot(ctx, &self.request),
                    )
                    .await?;
                self.record_turn(TurnStatus::Cancelled, text, None, None)
                    .await?;
                ack(&self.message).await;
                cancel::clear_flag(&ctx.layout.sessions, id).await;
                Ok(report(Outcome::Cancelled, "cancelled while generating"))
            }
            Ending::Backend(BackendError::Rejected(reason)) => {
                publisher
                    .finish_with(
                        &Event::Error {
                            message_id: Some(id),
                            code: ErrorCode::ModelFailed,
                            message: reason,
                        },
                        release_slot(ctx, &self.request),
                    )
                    .await?;
                self.record_turn(TurnStatus::Failed, text, None, None)
                    .await?;
                term(&self.message).await;
                Ok(report(Outcome::Failed, "model refused"))
            }
            Ending::Backend(BackendError::Unavailable {
                message,
                retry_after,
            }) => {
                if let Err(e) = publisher.finish().await {
                    tracing::debug!(error = %e, "events of a failed attempt");
                }
                if i64::from(self.attempt()) < ctx.layout_config.max_deliver {
                    tracing::info!(error = %message, "model unavailable; retrying later");
                    hand_back(
                        &self.message,
                        Some(retry_after.unwrap_or_else(|| self.retry_delay())),
                    )
                    .await;
                    Ok(report(Outcome::Redelivered, "model unavailable"))
                } else {
                    let reason = format!(
                        "the model stayed unavailable for {} attempts: {message}",
                        self.attempt()
                    );
                    dead_letter::dead_letter(
                        ctx,
                        &self.request,
                        &reason,
                        u64::from(self.attempt()),
                    )
                    .await?;
                    term(&self.message).await;
                    Ok(report(Outcome::DeadLettered, "retries exhausted"))
                }
            }
            Ending::Publish(e) => {
                tracing::warn!(error = %e, "events not stored; handing the job back");
                hand_back(&self.message, Some(self.retry_delay())).await;
                Ok(report(Outcome::Redelivered, "publish failed"))
            }
            Ending::Aborted => {
                // Nothing is published: the next attempt announces `restart`.
                hand_back(&self.message, None).await;
                Ok(report(Outcome::Redelivered, "shutdown"))
            }
            Ending::Superseded => Ok(Report {
                outcome: None,
                detail: "taken over by another worker",
                chunks,
                tokens,
            }),
        }
    }

    /// Streams the backend's answer as chunks until it ends, is cancelled,
    /// fails, or the worker's shutdown grace is over.
    async fn generate(
        &self,
        publisher: &mut EventPublisher,
        cancelled: &CancellationToken,
        superseded: &CancellationToken,
        generation: Generation,
    ) -> Produced {
        let ctx = &self.ctx;
        let mut stream = ctx.backend.generate(generation);
        let mut chunker = Chunker::new(ctx.chunk_window, ctx.chunk_max_bytes);
        let progress_every = ctx.layout_config.progress_interval();
        let mut progress =
            tokio::time::interval_at(Instant::now() + progress_every, progress_every);
        let mut produced = Produced {
            ending: Ending::Aborted,
            text: String::new(),
            chunks: 0,
            tokens: 0,
        };

        let ending = loop {
            let due = chunker.deadline();
            let chunk = tokio::select! {
                biased;
                _ = cancelled.cancelled() => {
                    drop(stream);
                    if let Some(text) = chunker.flush() {
                        if let Err(e) = self.publish_chunk(publisher, &mut produced, text).await {
                            break Ending::Publish(e);
                        }
                    }
                    break Ending::Cancelled;
                }
                _ = ctx.abort.cancelled() => break Ending::Aborted,
                _ = superseded.cancelled() => break Ending::Superseded,
                _ = sleep_until(due) => chunker.flush(),
                _ = progress.tick() => {
                    if let Err(e) = self.message.ack_with(AckKind::Progress).await {
                        tracing::warn!(error = %e, "progress ack failed");
                    }
                    None
                }
                item = stream.next() => match item {
                    Some(Ok(ModelOutput::Token(token))) => {
                        // A backend that is always ready (the zero-delay
                        // demo) must not starve the other jobs of its thread.
                        tokio::task::consume_budget().await;
                        produced.tokens += 1;
                        produced.text.push_str(&token);
                        chunker.push(&token, Instant::now())
                    }
                    Some(Ok(ModelOutput::Finished { finish_reason, usage })) => {
                        if let Some(text) = chunker.flush() {
                            if let Err(e) = self.publish_chunk(publisher, &mut produced, text).await {
                                break Ending::Publish(e);
                            }
                        }
                        break Ending::Finished { finish_reason, usage };
                    }
                    Some(Err(e)) => break Ending::Backend(e),
                    None => break Ending::Backend(BackendError::Unavailable {
                        message: "the model's stream ended before the answer was complete".into(),
                        retry_after: None,
                    }),
                },
            };
            if let Some(text) = chunk {
                if let Err(e) = self.publish_chunk(publisher, &mut produced, text).await {
                    break Ending::Publish(e);
                }
            }
        };
        produced.ending = ending;
        produced
    }

    async fn publish_chunk(
        &self,
        publisher: &mut EventPublisher,
        produced: &mut Produced,
        text: String,
    ) -> Result<(), PublishFailed> {
        publisher
            .publish(&Event::Chunk {
                message_id: self.message_id(),
                attempt: self.attempt(),
                index: produced.chunks,
                text,
                published_at_us: Some(now_us()),
            })
            .await?;
        if produced.chunks == 0 {
            metrics::first_chunk(self.started.elapsed());
        }
        produced.chunks += 1;
        Ok(())
    }

    /// Stores the finished turn in history and finishes the session record.
    async fn record_turn(
        &self,
        status: TurnStatus,
        assistant: String,
        finish_reason: Option<FinishReason>,
        usage: Option<Usage>,
    ) -> Result<(), PublishFailed> {
        record_turn(
            &self.ctx,
            &self.request,
            self.attempt(),
            status,
            assistant,
            finish_reason,
            usage,
        )
        .await
    }
}

/// Publishes a finished turn to the session's history (deduplicated on the
/// message id, so a repeated attempt cannot store two) and moves the message
/// from `active` to `recent` in the session record.
pub async fn record_turn(
    ctx: &JobContext,
    request: &ChatRequest,
    attempt: u32,
    status: TurnStatus,
    assistant: String,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
) -> Result<(), PublishFailed> {
    let turn = Turn {
        message_id: request.message_id,
        user: request.content.clone(),
        assistant,
        status,
        created_at: request.accepted_at_ms,
        finished_at: protocol::now_ms(),
        attempt,
        finish_reason,
        usage,
        user_seq: request.user_seq,
    };
    let payload: bytes::Bytes = serde_json::to_vec(&turn)
        .map_err(|e| PublishFailed(e.to_string()))?
        .into();
    // The answer's terminal event is stored already: ride out a NATS blip
    // rather than hand the job back to be answered twice. Deduplicated on
    // the message id, so a retry of a write that did land stores nothing.
    let deadline = Instant::now() + RECORD_RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        let stored = async {
            ctx.js
                .send_publish(
                    subjects::history(request.session_id),
                    PublishMessage::build()
                        .payload(payload.clone())
                        .message_id(subjects::dedup_id(request.message_id)),
                )
                .await
                .map_err(|e| PublishFailed(e.to_string()))?
                .await
                .map_err(|e| PublishFailed(e.to_string()))
        }
        .await;
        match stored {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "storing the turn; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
    finish_session(ctx, request).await;
    Ok(())
}

/// How long the writes after an answer (history turn, session record) are
/// retried: longer than a nats-server restart takes.
const RECORD_RETRY_FOR: Duration = Duration::from_secs(15);

/// Marks the message finished in its session record. A failure is logged,
/// not fatal: the turn is stored, and the record's stale entries expire.
pub async fn finish_session(ctx: &JobContext, request: &ChatRequest) {
    let id = request.message_id;
    let deadline = Instant::now() + RECORD_RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        let result = sessions::update(&ctx.layout.sessions, request.session_id, |r| {
            Ok::<_, Infallible>(r.finish(id))
        })
        .await;
        match result {
            Ok(_) => return,
            Err(sessions::SessionStoreError::NotFound) => {
                tracing::debug!("session record gone; nothing to finish");
                return;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "finishing the session record; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            // Not fatal: the history turn marks the message answered too.
            Err(e) => {
                tracing::warn!(error = %e, "finishing the session record");
                return;
            }
        }
    }
}

/// Frees the message's in-flight slot in the session record before its
/// terminal event is stored, so a client that sends its next question the
/// moment `done` arrives is never refused for a message that has ended.
/// It stays out of `recent` until [`record_turn`] (what marks it answered
/// for a redelivery), and a failed write is left to `finish_session`.
async fn release_slot(ctx: &JobContext, request: &ChatRequest) {
    let id = request.message_id;
    let released = sessions::update(&ctx.layout.sessions, request.session_id, |r| {
        Ok::<_, Infallible>(r.mark_ending(id))
    })
    .await;
    if let Err(e) = released {
        tracing::debug!(error = %e, "releasing the in-flight slot early");
    }
}

/// Publishes one event and waits for it to be stored.
pub async fn publish_now(
    ctx: &JobContext,
    session: protocol::SessionId,
    event: &Event,
) -> Result<(), PublishFailed> {
    ctx.js
        .send_publish(
            subjects::events(session),
            PublishMessage::build().payload(event.to_payload()),
        )
        .await
        .map_err(|e| PublishFailed(e.to_string()))?
        .await
        .map_err(|e| PublishFailed(e.to_string()))?;
    Ok(())
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn finish_reason_label(reason: &FinishReason) -> &str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Other(other) => other,
    }
}
