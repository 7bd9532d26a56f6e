//! The generate step: announce a restart, stream the model's answer as
//! chunks (and its thinking as `reasoning` events) until it ends, is cancelled, fails, is taken over, or the
//! worker's shutdown grace is over, and say how it stopped.

use futures::StreamExt;
use protocol::records::Turn;
use protocol::{Event, FinishReason};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use async_nats::jetstream::context::PublishErrorKind;

use super::ending::{Generated, Stop};
use super::{Job, JobError};
use crate::backends::{BackendError, Generation, ModelOutput};
use crate::cancel::{self, CancelGuard};
use crate::chunking::{AnswerChunker, Piece};
use crate::metrics;
use crate::publish::{EventPublisher, FirstEvent, PublishFailed};
use crate::siblings::{self, SessionSubject};

impl Job {
    /// Starts this attempt's event publisher; a redelivered job first tells
    /// the session to drop the partial answer of the attempt before.
    ///
    /// That `restart` is stored only right after `last_seq`, the session's
    /// last event as the admit step read it (compare-and-set): the read may
    /// have been answered by a replica that was behind, missing a terminal
    /// event the leader already holds, and a `restart` after a stored
    /// `done` is a second answer (`chatctl recovery --cluster`:
    /// `extra_terminal`, `done a1` then `restart a2`). A stream this
    /// message's events moved is [`JobError::StreamMoved`]: the admit step
    /// reads again (other messages' events are stepped past, see
    /// [`crate::siblings`]).
    pub(super) async fn start_publishing(&self, last_seq: u64) -> Result<EventPublisher, JobError> {
        let ctx = &self.ctx;
        let subject = protocol::subjects::events(self.request.session_id);
        let mut after_seq = last_seq;
        // A first attempt has stored nothing yet: its first event must
        // follow what the admit step read, or another run that also counts
        // itself first (its delivery count restarted with nats-server)
        // stored since, and this one reads again. A later attempt's
        // `restart` is that fence.
        let mut first = FirstEvent::RightAfter(last_seq);
        if self.attempt() > 1 {
            let restart = Event::Restart {
                message_id: self.message_id(),
                attempt: self.attempt(),
            };
            let session = SessionSubject {
                js: &ctx.js,
                events: &ctx.layout.events,
                subject: &subject,
                message: Some(self.message_id()),
            };
            let stored = session.publish_right_after(restart.to_payload(), last_seq);
            match self.unless_connection_lost("start", stored).await? {
                Ok((ack, _)) => {
                    after_seq = ack.sequence;
                    first = FirstEvent::Anywhere;
                }
                Err(e) if siblings::is_moved(&e) => {
                    tracing::info!(last_seq, "the session's stream moved on; reading it again");
                    return Err(JobError::StreamMoved);
                }
                // No leader took it (an election): nothing is stored yet,
                // so the attempt waits for one instead of spending a delivery.
                Err(e)
                    if matches!(
                        e.kind(),
                        PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut
                    ) =>
                {
                    tracing::info!(error = %e, "no stream leader for the restart; waiting for one");
                    return Err(JobError::StreamLeaderless);
                }
                Err(e) => return Err(PublishFailed::from(e).into()),
            }
        }
        Ok(EventPublisher::start(
            ctx.js.clone(),
            ctx.layout.events.clone(),
            ctx.connection.clone(),
            subject,
            after_seq,
            first,
            ctx.chunk_window.clone(),
        ))
    }

    /// Generates the answer under its own `model` span, with `history` as
    /// the model's context, and records how long it took.
    pub(super) async fn generate(
        &self,
        publisher: &mut EventPublisher,
        guard: &CancelGuard,
        history: Vec<Turn>,
    ) -> Generated {
        let ctx = &self.ctx;
        let started = Instant::now();
        let model_span = tracing::info_span!(
            "model",
            otel.name = "chat.model",
            backend = ctx.backend.name(),
            model = self.request.model.as_deref().unwrap_or("default"),
            attempt = self.attempt(),
            tokens = tracing::field::Empty,
            finish_reason = tracing::field::Empty,
        );
        let generation = Generation {
            prompt: self.request.content.clone(),
            history,
            model: self.request.model.clone(),
        };
        let generated = self
            .stream_chunks(publisher, guard.token(), guard.superseded(), generation)
            .instrument(model_span.clone())
            .await;
        model_span.record("tokens", generated.tokens);
        if let Stop::Finished { finish_reason, .. } = &generated.stop {
            let reason = finish_reason_label(finish_reason);
            model_span.record("finish_reason", reason);
            tracing::Span::current().record("finish_reason", reason);
        }
        metrics::generation(started.elapsed(), ctx.backend.name(), generated.tokens);
        generated
    }

    /// Streams the backend's answer as chunks (and its reasoning, if it
    /// thinks, as `reasoning` events) until it stops.
    async fn stream_chunks(
        &self,
        publisher: &mut EventPublisher,
        cancelled: &CancellationToken,
        superseded: &CancellationToken,
        generation: Generation,
    ) -> Generated {
        let ctx = &self.ctx;
        let mut stream = ctx.backend.generate(generation);
        let mut chunker = AnswerChunker::new(ctx.chunk_max_bytes);
        let progress_every = ctx.layout_config.progress_interval();
        let mut progress =
            tokio::time::interval_at(Instant::now() + progress_every, progress_every);
        let mut generated = Generated {
            stop: Stop::Aborted,
            text: String::new(),
            chunks: 0,
            tokens: 0,
            reasoning: 0,
            reasoning_chars: 0,
        };

        // One timer for the open chunk's window, set again only when the
        // chunk changes (not per token: a timer armed and dropped per token
        // is a real share of a paced worker's CPU).
        let window_end = tokio::time::sleep_until(Instant::now());
        tokio::pin!(window_end);
        let mut armed: Option<Instant> = None;

        // The three reasons to stop, each waited on by one future made once:
        // three fresh `cancelled()` futures per token (made, registered,
        // dropped) cost a paced worker 4 % of its instructions per chunk.
        let on_cancel = cancelled.cancelled();
        let on_abort = ctx.abort.cancelled();
        let on_superseded = superseded.cancelled();
        tokio::pin!(on_cancel, on_abort, on_superseded);

        let stop = 'generating: loop {
            let due = chunker.deadline();
            if due != armed {
                if let Some(due) = due {
                    window_end.as_mut().reset(due);
                }
                armed = due;
            }
            let pieces: Vec<Piece> = tokio::select! {
                biased;
                () = &mut on_cancel => {
                    drop(stream);
                    if let Some(piece) = chunker.flush() {
                        if let Err(e) = self.publish_piece(publisher, &mut generated, piece).await {
                            break Stop::Publish(e);
                        }
                    }
                    break Stop::Cancelled;
                }
                () = &mut on_abort => break Stop::Aborted,
                () = &mut on_superseded => break Stop::Superseded,
                _ = &mut window_end, if armed.is_some() => chunker.flush().into_iter().collect(),
                // The lease itself is kept by `Job::keeping_the_lease`.
                _ = progress.tick() => {
                    // Two notices are core NATS and can be lost while a
                    // connection is down; what they say is also stored, and
                    // read here (at once, one round trip) each interval:
                    // - a cancel the client saw accepted (202): its KV flag;
                    // - a later attempt's claim: it stops this attempt instead
                    //   of letting it generate (and bill) its whole answer.
                    //   Chunks it stored meanwhile are stale to every client
                    //   (PROTOCOL.md: a lower attempt than the highest seen is
                    //   ignored), and its terminal event is fenced.
                    let (session, message) = (self.request.session_id, self.message_id());
                    let (flagged, claimed) = tokio::join!(
                        cancel::flag_set(&ctx.layout.sessions, session, message),
                        cancel::latest_claim(&ctx.layout.sessions, session, message),
                    );
                    if flagged {
                        tracing::info!("cancel flag found while generating");
                        cancelled.cancel();
                    }
                    if claimed.is_some_and(|attempt| attempt > self.attempt()) {
                        tracing::warn!(?claimed, "a later attempt claimed this message; stopping");
                        break Stop::Superseded;
                    }
                    Vec::new()
                }
                item = stream.next() => match item {
                    Some(Ok(ModelOutput::Token(token))) => {
                        // A backend that is always ready (the zero-delay
                        // demo) must not starve the other jobs of its thread.
                        tokio::task::consume_budget().await;
                        generated.tokens += 1;
                        generated.text.push_str(&token);
                        chunker.push_answer(&token, Instant::now(), ctx.chunk_window.window())
                    }
                    // Published, never part of the answer's text (nor of the
                    // context sent back to the model): the turn keeps its length.
                    Some(Ok(ModelOutput::Reasoning(token))) => {
                        tokio::task::consume_budget().await;
                        generated.reasoning_chars += token.chars().count() as u64;
                        chunker.push_reasoning(&token, Instant::now(), ctx.chunk_window.window())
                    }
                    Some(Ok(ModelOutput::Finished { finish_reason, usage })) => {
                        if let Some(piece) = chunker.flush() {
                            if let Err(e) = self.publish_piece(publisher, &mut generated, piece).await {
                                break Stop::Publish(e);
                            }
                        }
                        break Stop::Finished { finish_reason, usage };
                    }
                    Some(Err(e)) => break Stop::Backend(e),
                    None => break Stop::Backend(BackendError::Unavailable {
                        message: "the model's stream ended before the answer was complete".into(),
                        retry_after: None,
                    }),
                },
            };
            for piece in pieces {
                if let Err(e) = self.publish_piece(publisher, &mut generated, piece).await {
                    break 'generating Stop::Publish(e);
                }
            }
        };
        generated.stop = stop;
        generated
    }

    /// Publishes a piece as its event: a `chunk` of the answer or a
    /// `reasoning` event, each numbered in its own sequence.
    async fn publish_piece(
        &self,
        publisher: &mut EventPublisher,
        generated: &mut Generated,
        piece: Piece,
    ) -> Result<(), PublishFailed> {
        match piece {
            Piece::Answer(text) => self.publish_chunk(publisher, generated, text).await,
            Piece::Reasoning(text) => {
                publisher
                    .publish(&Event::Reasoning {
                        message_id: self.message_id(),
                        attempt: self.attempt(),
                        index: generated.reasoning,
                        text,
                        published_at_us: Some(now_us()),
                    })
                    .await?;
                generated.reasoning += 1;
                Ok(())
            }
        }
    }

    async fn publish_chunk(
        &self,
        publisher: &mut EventPublisher,
        generated: &mut Generated,
        text: String,
    ) -> Result<(), PublishFailed> {
        publisher
            .publish(&Event::Chunk {
                message_id: self.message_id(),
                attempt: self.attempt(),
                index: generated.chunks,
                text,
                published_at_us: Some(now_us()),
            })
            .await?;
        // The first token's time is the answer's: reasoning does not count.
        if generated.chunks == 0 {
            // Written out now, before the model's next tokens are published
            // behind it: a model that is always ready (the zero-delay demo)
            // would otherwise fill the connection's buffer with the whole
            // answer before this job's task yields, and the first chunk
            // would leave with the last.
            if let Err(e) = self.ctx.js.client().flush().await {
                tracing::debug!(error = %e, "flushing the first chunk");
            }
            metrics::first_chunk(self.started.elapsed());
        }
        generated.chunks += 1;
        Ok(())
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
