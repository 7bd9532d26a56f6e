//! One job's lifecycle, in named steps: [`admit`] (is there anything to
//! generate? claim the job), [`generate`] (stream the answer as chunks),
//! and [`conclude`] (store what the session is owed, then answer the
//! work-queue). Every way a job can end is an [`ending::Ending`], data the
//! conclude step carries out in one place.

mod admit;
mod conclude;
mod ending;
mod fence;
mod generate;
mod hold;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, AckKind};
use protocol::{subjects, ChatRequest, MessageId};
use tokio::time::Instant;
use tracing::Instrument;

use crate::cancel::CancelGuard;
use crate::context::JobContext;
use crate::metrics::{self, Outcome};
use crate::publish::{EventPublisher, PublishFailed};
use admit::Admission;
use ending::{Attempt, Ending, Report, Stop};
use fence::TerminalFence;
use protocol::records::Turn;

pub(crate) use ending::QueueReply;

/// Runs one pulled job to its end.
pub(crate) async fn run(ctx: Arc<JobContext>, message: jetstream::Message) {
    let _in_flight = metrics::InFlight::start();
    let started = Instant::now();
    let (attempt, stream_seq) = match message.info() {
        Ok(info) => (
            u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
            info.stream_sequence,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "a job without JetStream metadata; dropped");
            QueueReply::Term.send(&message).await;
            return;
        }
    };
    let request: ChatRequest = match serde_json::from_slice(&message.payload) {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(stream_seq, error = %e, "unreadable job; dropped");
            QueueReply::Term.send(&message).await;
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
        claim_seq: AtomicU64::new(0),
        started,
        replied: AtomicBool::new(false),
    };
    job.run().instrument(span).await;
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Publish(#[from] PublishFailed),
    /// The NATS connection went while a step waited on NATS replies: they
    /// can no longer come, and the client would wait out its request
    /// time-out (5 s) first. Every write of a step is deduplicated or
    /// checked by the next attempt's admit step, so it is safe to stop.
    #[error("the NATS connection was lost during the {0} step")]
    ConnectionLost(&'static str),
    /// The session's stream moved on from what the admit step read (its
    /// read was answered by a replica that was behind, or another message
    /// of the session stored an event meanwhile).
    #[error("the session's stream moved on since the admit step read it")]
    StreamMoved,
    /// The session's stream took no write: it has no leader (an election
    /// after a cluster node was lost), or its answer did not come.
    #[error("the session's stream has no leader")]
    StreamLeaderless,
}

/// What the admit step left an attempt to do.
enum Admitted {
    /// Generate, publishing with this publisher, with this history.
    Generate(Box<EventPublisher>, Vec<Turn>),
    /// Nothing: the job ended in the admit step, as this report says.
    Ended(Report),
}

/// Attempts a job runs on the new connection after its old one was lost
/// while generating, before it is handed back instead.
const RESTARTS_IN_PLACE: usize = 2;

/// Admit steps an attempt runs again when its stream moved on before its
/// first write, before it is handed back.
const READMISSIONS: usize = 3;

struct Job {
    ctx: Arc<JobContext>,
    message: jetstream::Message,
    request: ChatRequest,
    /// The delivery count, raised when the stream shows an earlier run of
    /// this message that the count does not (see `Job::admit`).
    attempt: AtomicU32,
    /// The sequence of this run's latest claim on the message's claims
    /// subject (0: none, as for a first attempt); its terminal event is
    /// stored only while that is the subject's last (see `fence`).
    claim_seq: AtomicU64,
    started: Instant,
    /// Set once the work-queue got this attempt's answer (ack, nak, term,
    /// or leaving the job to a later attempt): the lease is no longer kept.
    replied: AtomicBool,
}

impl Job {
    /// The steps of one attempt. Each ending, whether before or after
    /// generating, goes through `conclude`.
    ///
    /// Each step's future is boxed where it is awaited. Inlined, every
    /// layer above a step (the retry, the lease, the span, the spawned
    /// task) held room for the largest step's state once more, so a job in
    /// flight weighed 190 KB in the release build, copied whole at each
    /// layer as it started and ended: 7 % of the worker's instructions per
    /// chunk of a zero-delay answer, and half the workers' memory at 1,000
    /// paced streams (README, "What one chunk costs").
    async fn process(&self) -> Result<Report, JobError> {
        let guard =
            self.ctx
                .cancels
                .register(self.request.session_id, self.message_id(), self.attempt());
        let mut restarts_in_place = 0;
        let mut readmissions = 0;
        loop {
            let losses = self.ctx.connection.losses();
            let (mut publisher, history) = match Box::pin(self.admit_and_announce(&guard)).await? {
                Admitted::Generate(publisher, history) => (*publisher, history),
                Admitted::Ended(report) => return Ok(report),
            };
            let generated = Box::pin(self.generate(&mut publisher, &guard, history)).await;
            if publisher.stream_moved() && readmissions < READMISSIONS {
                // Its first event was refused: another run of this message
                // stored an event since the admit step read the stream
                // (nothing of this attempt is stored). Read it again: that
                // run's events make this one the next attempt.
                readmissions += 1;
                tracing::info!(
                    "the session's stream moved on before the first event; reading it again"
                );
                continue;
            }
            if matches!(generated.stop, Stop::Publish(_))
                && self.ctx.connection.losses() != losses
                && restarts_in_place < RESTARTS_IN_PLACE
            {
                // Its chunks lost their acks with the connection. Handed
                // back, the job would come again only after nats-server's
                // own timers (a restarted server kept its delivery and
                // redelivered it 2.3 s later, a nak's 250 ms notwithstanding):
                // the next attempt runs here, on the new connection, with
                // the lease still held.
                restarts_in_place += 1;
                self.attempt.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    attempt = self.attempt(),
                    "the NATS connection was lost while generating; starting over on the new one"
                );
                continue;
            }
            let ending = Ending::after_generation(generated, self.attempt_facts());
            // A first attempt that stored nothing (an empty answer, a
            // failure before the first token) has no claim to fence its
            // terminal event: it is stored only right after the admit
            // step's read, like an ending decided before generating.
            let fence = match publisher.unstored_first() {
                Some(last_seq) => TerminalFence::RightAfter(last_seq),
                None => TerminalFence::OwnClaim,
            };
            let concluded = Box::pin(self.conclude(ending, Some(publisher), &guard, fence));
            match self.unless_connection_lost("conclude", concluded).await? {
                Err(JobError::StreamMoved) if readmissions < READMISSIONS => {
                    readmissions += 1;
                    continue;
                }
                concluded => return concluded,
            }
        }
    }

    /// The admit step (asked again when the connection it went out on is
    /// lost) and, for an attempt that generates, its `restart` announcement;
    /// read again when the stream moved on before the announcement.
    async fn admit_and_announce(&self, guard: &CancelGuard) -> Result<Admitted, JobError> {
        let mut readmissions = 0;
        loop {
            // Reads, and a claim notice: asked again on the new connection
            // when the one they went out on is lost, instead of handing the
            // job back (a redelivery waits for the retry delay and the next
            // pull).
            let admission = self
                .ctx
                .connection
                .retry_when_lost(|| Box::pin(self.admit(guard)))
                .await
                .map_err(|_| JobError::ConnectionLost("admit"))?;
            let (history, last_seq) = match admission {
                Admission::Run { history, last_seq } => (history, last_seq),
                Admission::End(ending) => {
                    let concluded =
                        Box::pin(self.conclude(ending, None, guard, TerminalFence::OwnClaim));
                    let report = self.unless_connection_lost("conclude", concluded).await??;
                    return Ok(Admitted::Ended(report));
                }
                Admission::Close { ending, last_seq } => {
                    let fence = TerminalFence::RightAfter(last_seq);
                    let concluded = Box::pin(self.conclude(ending, None, guard, fence));
                    match self.unless_connection_lost("conclude", concluded).await? {
                        Ok(report) => return Ok(Admitted::Ended(report)),
                        // An event was stored since the read (an earlier
                        // run's terminal event, perhaps): read again.
                        Err(JobError::StreamMoved) if readmissions < READMISSIONS => {
                            readmissions += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            match Box::pin(self.start_publishing(last_seq)).await {
                Ok(publisher) => return Ok(Admitted::Generate(Box::new(publisher), history)),
                // The stream holds more than the admit step read (a replica
                // behind answered it): read again before announcing anything.
                Err(JobError::StreamMoved) if readmissions < READMISSIONS => readmissions += 1,
                Err(JobError::StreamLeaderless) if readmissions < READMISSIONS => {
                    readmissions += 1;
                    self.hold_until_writable().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs a step made of NATS round trips, or fails the attempt as soon
    /// as the connection it started on is lost (the replies it waits for
    /// cannot come). Generating is not wrapped: its publishes fail through
    /// the publisher only when an ack was outstanding.
    async fn unless_connection_lost<T>(
        &self,
        step: &'static str,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, JobError> {
        let connection = &self.ctx.connection;
        let seen = connection.losses();
        tokio::select! {
            done = work => Ok(done),
            _ = connection.lost_since(seen) => Err(JobError::ConnectionLost(step)),
        }
    }

    /// Processes the job, hands it back if that failed, and reports.
    async fn run(self) {
        let processed = async {
            match self.process().await {
                Ok(report) => report,
                Err(e) => {
                    tracing::warn!(error = %e, "job attempt failed; handing it back");
                    // The connection went with a node, which may have led the
                    // session's stream: handed back once it takes writes again.
                    self.hold_until_writable().await;
                    self.reply(QueueReply::Nak(Some(ending::NATS_RETRY_DELAY)))
                        .await;
                    Report::new(Some(Outcome::Redelivered), "internal error")
                }
            }
        };
        let report = self.keeping_the_lease(processed).await;
        let elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let span = tracing::Span::current();
        span.record("chunks", report.chunks);
        match report.outcome {
            Some(outcome) => {
                span.record("outcome", outcome.as_str());
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

    /// Runs `work` while telling the work-queue, every progress interval,
    /// that this attempt still runs the job, until it has replied. Every
    /// step counts, not only generating: an admit step or a hold that
    /// waits out a stream's election longer than `ack_wait` let the job be
    /// delivered again meanwhile, and the two attempts used up its
    /// deliveries (cluster recovery test: `retries_exhausted`).
    async fn keeping_the_lease<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        let every = self.ctx.layout_config.progress_interval();
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = ticks.tick() => {
                    if self.replied.load(Ordering::Acquire) {
                        continue;
                    }
                    if let Err(e) = self.message.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "progress ack failed");
                    }
                }
            }
        }
    }

    /// Answers the work-queue for this attempt; the lease is not kept after.
    async fn reply(&self, reply: QueueReply) {
        self.replied.store(true, Ordering::Release);
        reply.send(&self.message).await;
    }

    fn message_id(&self) -> MessageId {
        self.request.message_id
    }

    fn attempt(&self) -> u32 {
        self.attempt.load(Ordering::Relaxed)
    }

    fn raise_attempt(&self, attempt: u32) {
        self.attempt.fetch_max(attempt, Ordering::Relaxed);
    }

    fn claim_seq(&self) -> u64 {
        self.claim_seq.load(Ordering::Relaxed)
    }

    fn set_claim_seq(&self, seq: u64) {
        self.claim_seq.store(seq, Ordering::Relaxed);
    }

    /// This attempt, as the endings need it.
    fn attempt_facts(&self) -> Attempt {
        Attempt {
            message_id: self.message_id(),
            number: self.attempt(),
            max_deliver: self.ctx.layout_config.max_deliver,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    /// The size of the future `f` returns, from its type alone.
    fn future_size<A, B, F: Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_job_in_flight_weighs_kilobytes_not_hundreds_of_them() {
        // A worker holds one per answer in flight (1,000 at 1,000 paced
        // streams), and its task moves it whole when it starts and ends.
        let size = future_size(super::run);
        assert!(size <= 16 * 1024, "a job in flight is {size} bytes");
    }
}
