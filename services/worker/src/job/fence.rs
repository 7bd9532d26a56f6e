//! Storing a terminal event only while this run still owns its message.
//!
//! A job's lease can pass to another worker while this one still runs it
//! without knowing: its progress acks went to a consumer leader that died
//! (a NATS node lost in a cluster), so after `ack_wait` the job was
//! delivered again, and the new attempt announced `restart` on the
//! session's stream. Its core claim notice is best-effort (lost while this
//! worker's connection is cut, or racing this attempt's last step). Found
//! by `chatctl recovery --cluster`: `restart a2`, then `done a1`, then a
//! whole second answer.
//!
//! The stream is the truth, and the server checks it as it stores the
//! terminal event, without a read: every run that takes a message over
//! (attempt 2 and later) first stores its claim on the message's claims
//! subject ([`subjects::claims`]) in `CHAT_EVENTS`, compare-and-set against
//! the last claim it read, so the claims are stored in rising attempt
//! order. Only then does it store `restart` or anything else. A terminal
//! event is published with a compare-and-set on that claims subject
//! (`Nats-Expected-Last-Subject-Sequence-Subject`): its last sequence must
//! still be this run's own claim (none, for a first attempt). Any later
//! attempt that stored anything had stored its claim before, so the
//! server refuses the terminal event; a later attempt whose claim comes
//! after the terminal event finds the answer stored (its `restart` is
//! compare-and-set against the session's last event, which moved).
//!
//! A terminal event decided before generating (a cancel seen at admission,
//! a model not served) has no `restart` to check that, and the claim comes
//! after the admit step's reads: an earlier run's terminal event stored
//! between the two was followed by a second one (`chatctl soak`: two
//! `cancelled` for one message at a nats-server restart). Such a terminal
//! event is stored only right after the session's last event as the admit
//! step read it (compare-and-set on the session's subject): an event of
//! this message stored since moves that subject, and the admit step reads
//! again. Other messages' events move it too; those are stepped past
//! ([`crate::siblings`]).

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use bytes::Bytes;
use protocol::{subjects, CancelNotice, Event};

use super::Job;
use crate::cancel::CancelGuard;
use crate::publish::PublishFailed;
use crate::siblings::{is_moved, SessionSubject};

/// Compare-and-set claims before giving up: another run of the same
/// message may claim in between, or a replica behind answered the read.
const TRIES: usize = 10;
/// The pause before reading again when a replica lagged the other read.
const LAGGING_REPLICA_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// What a terminal event is stored after.
#[derive(Debug, Clone, Copy)]
pub(super) enum TerminalFence {
    /// After this run's own claim, the last on the message's claims
    /// subject: for a run that generated.
    OwnClaim,
    /// Right after the session's event at this sequence (0: none), as the
    /// admit step read it: for an ending decided before generating.
    RightAfter(u64),
}

/// What became of a terminal event.
pub(super) enum Fenced {
    /// Stored now.
    Stored,
    /// A later attempt owns the message: nothing was stored.
    Superseded,
    /// The session's stream holds events the admit step did not read:
    /// nothing was stored; the admit step reads again.
    Moved,
}

/// What became of a run's claim on the stream.
pub(super) enum Claimed {
    /// Stored: the message is this run's.
    Ours,
    /// A later attempt claimed the message after this run's own earlier
    /// claim: it is theirs.
    TakenOver,
}

impl Job {
    /// Stores this run's claim on the message's claims subject, after the
    /// last claim it reads there; a later or equal attempt's claim raises
    /// this run's attempt above it (or, if this run claimed before, leaves
    /// the message to it). Asked of attempts after the first only.
    pub(super) async fn claim_on_the_stream(
        &self,
        guard: &CancelGuard,
    ) -> Result<Claimed, PublishFailed> {
        let subject = subjects::claims(self.request.session_id, self.message_id());
        let events = &self.ctx.layout.events;
        for _ in 0..TRIES {
            let last = match events.direct_get_last_for_subject(subject.clone()).await {
                Ok(m) => Some((
                    m.sequence,
                    serde_json::from_slice::<CancelNotice>(&m.payload),
                )),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => None,
                Err(e) => return Err(PublishFailed(format!("reading the message's claim: {e}"))),
            };
            let mine = guard.claim_notice();
            let expected = match last {
                None => 0,
                Some((seq, Ok(notice))) if notice.claimed_by == mine.claimed_by => {
                    // Stored by this run, its ack lost with the connection.
                    self.set_claim_seq(seq);
                    return Ok(Claimed::Ours);
                }
                Some((seq, notice)) => {
                    let theirs = notice.ok().and_then(|n| n.attempt).unwrap_or(0);
                    if theirs >= self.attempt() {
                        if guard.has_claimed() {
                            return Ok(Claimed::TakenOver);
                        }
                        self.raise_attempt(theirs + 1);
                        guard.set_attempt(self.attempt());
                    }
                    seq
                }
            };
            if !self.ctx.claim_pause.is_zero() {
                tokio::time::sleep(self.ctx.claim_pause).await;
            }
            let message = PublishMessage::build()
                .payload(guard.claim_notice().to_payload())
                .expected_last_subject_sequence(expected);
            let acked = match self.ctx.js.send_publish(subject.clone(), message).await {
                Ok(ack) => ack.await,
                Err(e) => return Err(e.into()),
            };
            match acked {
                Ok(ack) => {
                    self.set_claim_seq(ack.sequence);
                    return Ok(Claimed::Ours);
                }
                // Another run claimed since the read, or the read came
                // from a replica that was behind: read again.
                Err(e) if is_moved(&e) => {
                    tokio::time::sleep(LAGGING_REPLICA_PAUSE).await;
                }
                // No stream leader (an election): wait for one.
                Err(e)
                    if matches!(
                        e.kind(),
                        PublishErrorKind::StreamNotFound | PublishErrorKind::TimedOut
                    ) =>
                {
                    tracing::info!(error = %e, "no stream leader for the claim; waiting for one");
                    self.hold_until_writable().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(PublishFailed(format!(
            "the message's claims kept moving: no claim stored in {TRIES} tries"
        )))
    }

    /// Stores `terminal` only while `fence` holds, checked by the server as
    /// it stores it: one publish, or one more per other answer's events
    /// stepped past ([`crate::siblings`]).
    pub(super) async fn store_terminal(
        &self,
        terminal: &Event,
        fence: TerminalFence,
    ) -> Result<Fenced, PublishFailed> {
        let payload = terminal.to_payload();
        match fence {
            TerminalFence::OwnClaim => self.store_after_own_claim(payload).await,
            TerminalFence::RightAfter(last_seq) => self.store_right_after(payload, last_seq).await,
        }
    }

    /// Stores `payload` while the message's last claim is this run's own
    /// (none, for a first attempt).
    async fn store_after_own_claim(&self, payload: Bytes) -> Result<Fenced, PublishFailed> {
        let session = self.request.session_id;
        let message = PublishMessage::build()
            .payload(payload)
            .expected_last_subject_sequence(self.claim_seq())
            .header(
                subjects::HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
                subjects::claims(session, self.message_id()).as_str(),
            );
        let acked = match self
            .ctx
            .js
            .send_publish(subjects::events(session), message)
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => return Err(e.into()),
        };
        match acked {
            Ok(_) => Ok(Fenced::Stored),
            // The message's last claim is not this run's: a later attempt
            // claimed it (claims are stored in rising order).
            Err(e) if is_moved(&e) => Ok(Fenced::Superseded),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores `payload` right after the session's event at `last_seq` (or
    /// after other messages' events stored since).
    async fn store_right_after(
        &self,
        payload: Bytes,
        last_seq: u64,
    ) -> Result<Fenced, PublishFailed> {
        let subject = subjects::events(self.request.session_id);
        let session = SessionSubject {
            js: &self.ctx.js,
            events: &self.ctx.layout.events,
            subject: &subject,
            message: Some(self.message_id()),
        };
        match session.publish_right_after(payload, last_seq).await {
            Ok(_) => Ok(Fenced::Stored),
            // This message's run stored an event since the admit step's
            // read.
            Err(e) if is_moved(&e) => Ok(Fenced::Moved),
            Err(e) => Err(e.into()),
        }
    }
}
