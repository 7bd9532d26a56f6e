//! The admit step: before its first chunk, an attempt reads what decides
//! whether and how it runs, claims the job from any other worker still
//! running it, and ends at once when there is nothing to generate.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::DirectGetErrorKind;

use protocol::records::{self, Turn};
use protocol::{sessions, stored, subjects, Event};

use super::ending::Ending;
use super::fence::Claimed;
use super::Job;
use crate::cancel::{self, CancelGuard};
use crate::turns::Answer;

/// How long an attempt waits for its session's stream to be readable again
/// (its leader moving after a node was lost) before it hands the job back.
/// Each hand-back spends one of the job's deliveries, and an election that
/// outlasts a few of them dead-lettered answers (`chatctl recovery
/// --cluster`: `failed_answer` after a leader kill).
const STREAM_PATIENCE: Duration = Duration::from_secs(20);
/// The first pause between reads of an unreadable stream; it doubles up to
/// [`STREAM_RETRY_MAX`].
const STREAM_RETRY: Duration = Duration::from_millis(250);
const STREAM_RETRY_MAX: Duration = Duration::from_secs(2);

/// Whether an attempt generates, decided before its first chunk.
pub(super) enum Admission {
    /// It generates, with these finished turns as the model's context;
    /// `last_seq` is the session's last stored event as read (0: none), the
    /// sequence the attempt's first write expects to follow.
    Run { history: Vec<Turn>, last_seq: u64 },
    /// It ends without generating or storing an event: answered already,
    /// taken over, or the stream unreadable.
    End(Ending),
    /// It ends without generating, with a terminal event stored right
    /// after `last_seq` (see `fence`): cancelled, or asking for a model
    /// this worker does not serve.
    Close { ending: Ending, last_seq: u64 },
}

impl Job {
    pub(super) async fn admit(&self, guard: &CancelGuard) -> Admission {
        let ctx = &self.ctx;
        let id = self.message_id();
        if !ctx.admit_pause.is_zero() {
            tokio::time::sleep(ctx.admit_pause).await;
        }
        // What decides whether and how this job runs, read at once: every
        // round trip here is added to the time to the first chunk.
        let (answered, cancel_flagged, history, last_event, claimed) = tokio::join!(
            self.already_answered(),
            cancel::flag_set(&ctx.layout.sessions, self.request.session_id, id),
            self.context(),
            self.last_event_patiently(),
            cancel::latest_claim(&ctx.layout.sessions, self.request.session_id, id),
        );
        // Not knowing what the stream holds (its leader is moving) is no
        // licence to generate: an answer may be stored already.
        let Ok((last_seq, last_event)) = last_event else {
            return Admission::End(Ending::stream_unreadable(self.attempt_facts()));
        };
        self.continue_after(last_event.as_ref());
        match claimed {
            // This run claimed the job already and was admitted again
            // (after waiting out an election): a later attempt took it
            // over meanwhile. Its claim notice may have been missed, its
            // stored claim is not; claiming again would stop it, and the
            // two would stop each other (cluster recovery test: both
            // stopped, the job's deliveries ran out).
            Some(later) if later > self.attempt() && guard.has_claimed() => {
                return Admission::End(Ending::taken_over());
            }
            // This run's own claim, read by its admit step run again (its
            // first write found the stream moved on): it keeps its number.
            Some(own) if own == self.attempt() && guard.has_claimed() => {}
            // A run this delivery count does not know of claimed it (the
            // count restarted with nats-server, or the stream raised that
            // run's number): this one is the next.
            Some(earlier) if earlier >= self.attempt() => {
                self.attempt.store(earlier + 1, Ordering::Relaxed);
            }
            _ => {}
        }
        guard.set_attempt(self.attempt());
        if answered {
            return Admission::End(Ending::already_answered());
        }
        let started = Instant::now();
        let mut pause = STREAM_RETRY;
        let stored = loop {
            match self
                .answer_already_stored(last_event.as_ref(), last_seq)
                .await
            {
                Err(()) if started.elapsed() + pause < STREAM_PATIENCE => {
                    pause = self.wait_for_the_stream(pause).await;
                }
                read => break read,
            }
        };
        match stored {
            Ok(Some(answer)) => return Admission::End(Ending::answer_already_stored(answer)),
            Ok(None) => {}
            Err(()) => return Admission::End(Ending::stream_unreadable(self.attempt_facts())),
        }
        if let Err(ending) = self.claim(guard).await {
            return Admission::End(ending);
        }
        // The guard registered before the flag was read: a cancel is seen
        // through one or the other.
        if guard.token().is_cancelled() || cancel_flagged {
            let ending = Ending::cancelled_before_start(self.attempt_facts());
            return Admission::Close { ending, last_seq };
        }
        match self.request.model.as_deref() {
            Some(model) if !ctx.backend.serves_model(model) => {
                let ending = Ending::unknown_model(self.attempt_facts(), model);
                Admission::Close { ending, last_seq }
            }
            _ => Admission::Run { history, last_seq },
        }
    }

    /// Tells any other worker still running this message (it lost its lease
    /// without knowing) to stop: the job is ours now. A run after the first
    /// stores its claim on the stream first (see `fence`): without it, it
    /// must not store anything, and the job goes back.
    async fn claim(&self, guard: &CancelGuard) -> Result<(), Ending> {
        if self.attempt() > 1 {
            match self.claim_on_the_stream(guard).await {
                Ok(Claimed::Ours) => {}
                Ok(Claimed::TakenOver) => return Err(Ending::taken_over()),
                Err(e) => {
                    tracing::warn!(error = %e, "storing the claim");
                    return Err(Ending::stream_unreadable(self.attempt_facts()));
                }
            }
        }
        guard.claimed();
        let claim = guard.claim_notice().to_payload();
        if let Err(e) = self
            .ctx
            .js
            .client()
            .publish(subjects::cancel(self.request.session_id), claim)
            .await
        {
            tracing::debug!(error = %e, "announcing the claim");
        }
        if self.attempt() > 1 {
            let (session, message) = (self.request.session_id, self.message_id());
            cancel::store_claim(&self.ctx.layout.sessions, session, message, self.attempt()).await;
        }
        Ok(())
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
            | Some(Event::Reasoning {
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

    /// The stream is the truth: an earlier attempt may have stored this
    /// message's terminal event and then lost its history turn, its session
    /// record update and its ack (NATS went away in between). Generating
    /// again would send a second answer, and bill it twice; the turn is
    /// rebuilt from the stored events instead. The stream is read only when
    /// the session's last event is neither this message's question nor an
    /// unfinished run of it (then nothing of this message can be finished).
    /// `Err` when the stream could not be read (then nobody knows).
    /// The session's last stored event (sequence 0 and none when it has
    /// none), read again while the stream is unreadable, for up to
    /// [`STREAM_PATIENCE`]; `Err` after that.
    async fn last_event_patiently(&self) -> Result<(u64, Option<Event>), ()> {
        let subject = subjects::events(self.request.session_id);
        let started = Instant::now();
        let mut pause = STREAM_RETRY;
        loop {
            let read = self
                .ctx
                .layout
                .events
                .direct_get_last_for_subject(subject.clone())
                .await;
            match read {
                Ok(m) => return Ok((m.sequence, serde_json::from_slice(&m.payload).ok())),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok((0, None)),
                Err(e) if started.elapsed() + pause < STREAM_PATIENCE => {
                    tracing::info!(error = %e, "the session's stream is unreadable; waiting");
                    pause = self.wait_for_the_stream(pause).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the session's last event");
                    return Err(());
                }
            }
        }
    }

    /// Waits one pause (the lease is kept meanwhile by
    /// `Job::keeping_the_lease`); returns the next.
    async fn wait_for_the_stream(&self, pause: Duration) -> Duration {
        tokio::time::sleep(pause).await;
        (pause * 2).min(STREAM_RETRY_MAX)
    }

    async fn answer_already_stored(
        &self,
        last: Option<&Event>,
        last_seq: u64,
    ) -> Result<Option<Answer>, ()> {
        let id = self.message_id();
        match last {
            None => return Ok(None),
            Some(event) if event.message_id() == Some(id) && !event.is_terminal() => {
                return Ok(None)
            }
            Some(_) => {}
        }
        let ctx = &self.ctx;
        let subject = subjects::events(self.request.session_id);
        let client = ctx.js.client();
        let from = self.request.user_seq + 1;
        // One message's events: bounded by the answer's own size limit.
        let read = stored::read_range(
            &client,
            &ctx.layout.events,
            &subject,
            from,
            last_seq,
            usize::MAX,
        )
        .await;
        let events: Vec<Event> = match read {
            // A replica behind the one that gave `last_seq`: not the truth
            // yet (read again, patiently).
            Ok(stored) if !stored::reaches(&stored, from, last_seq) => {
                tracing::info!(
                    last_seq,
                    "a replica lags the session's stream; reading again"
                );
                return Err(());
            }
            Ok(stored) => stored
                .iter()
                .filter_map(|s| serde_json::from_slice::<Event>(&s.payload).ok())
                .filter(|e| e.message_id() == Some(id))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the message's stored events");
                return Err(());
            }
        };
        let Some((attempt, answer)) = Answer::from_stored(&events) else {
            return Ok(None);
        };
        self.attempt.store(attempt, Ordering::Relaxed);
        Ok(Some(answer))
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

    /// The finished turns the model gets as context (none if it takes none):
    /// the conversation as it stands, each regenerated question once with
    /// its latest answer, and without the answer this job replaces.
    async fn context(&self) -> Vec<Turn> {
        let ctx = &self.ctx;
        let turns = ctx.backend.context_turns();
        if turns == 0 {
            return Vec::new();
        }
        let client = ctx.js.client();
        match stored::read_turns(&client, &ctx.layout.history, self.request.session_id, turns).await
        {
            Ok(history) => records::current_turns(history, self.request.replaces),
            Err(e) => {
                // Context is a nicety; an answer without it beats none.
                tracing::warn!(error = %e, "reading history for context");
                Vec::new()
            }
        }
    }
}
