//! How an attempt ends, as data: every way a job can stop is mapped here to
//! what the conclude step does with it, in one table a reader can check
//! without a server (see the tests at the bottom).

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use protocol::records::TurnStatus;
use protocol::{ErrorCode, Event, FinishReason, MessageId, Usage};

use crate::backends::BackendError;
use crate::dead_letter;
use crate::metrics::Outcome;
use crate::publish::PublishFailed;
use crate::turns::Answer;

/// Everything the conclude step does to end an attempt, in its order:
/// settle the outstanding chunks (freeing the in-flight slot meanwhile),
/// store the terminal event, the dead letter, the turn and session record,
/// answer the work-queue, clear the cancel flag, report.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ending {
    pub(crate) outstanding: Outstanding,
    /// Frees the message's in-flight slot in the session record while the
    /// outstanding chunks are acknowledged (see `turns::mark_ending`).
    pub(crate) free_slot_early: bool,
    /// The event that closes the answer for the session's clients.
    pub(crate) terminal: Option<Event>,
    /// The reason stored in a dead letter, after the terminal event.
    pub(crate) dead_letter: Option<String>,
    /// The turn stored in history (then the session record is finished).
    pub(crate) turn: Option<Answer>,
    /// Before the job is answered, it is kept until the session's stream
    /// takes writes again (see `hold`): its events found no stream leader.
    pub(crate) hold_until_writable: bool,
    pub(crate) ack: QueueReply,
    pub(crate) cancel_flag: CancelFlag,
    pub(crate) report: Report,
}

/// What becomes of the chunks an attempt published whose acks are still
/// outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outstanding {
    /// Each must be stored before the terminal event: a lost one fails the
    /// attempt (it is retried with `restart`) instead of leaving a
    /// complete-looking answer with a hole.
    MustBeStored,
    /// Awaited, a failure only logged: this attempt is over either way.
    Settle,
    /// Not awaited: nothing more is published for this attempt.
    Abandon,
}

/// How the job is answered on the work-queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueReply {
    /// Done with: the answer and everything it owes the session are stored.
    Ack,
    /// Never to be tried again (a failure retrying cannot fix).
    Term,
    /// Handed back to be tried again after the delay.
    Nak(Option<Duration>),
    /// Not answered at all: another worker holds the job now.
    Leave,
}

impl QueueReply {
    /// Sends the answer; a failure is logged (the server's `ack_wait` and the
    /// "already answered" check cover a lost one). Nothing waits for the
    /// server's confirmation: a nats-server restarted after a crash may have
    /// lost its record of delivering the job, and then drops the ack without
    /// a reply (it hands the job out again, to be recognised as answered),
    /// so waiting would hold the job's slot for the whole request time-out.
    pub(crate) async fn send(self, message: &jetstream::Message) {
        let (sent, consequence) = match self {
            QueueReply::Ack => (
                message.ack().await,
                "ack failed; the job may be redelivered and recognised as finished",
            ),
            QueueReply::Term => (message.ack_with(AckKind::Term).await, "term failed"),
            QueueReply::Nak(delay) => (
                message.ack_with(AckKind::Nak(delay)).await,
                "nak failed; the job comes back after ack_wait",
            ),
            QueueReply::Leave => return,
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "{consequence}");
        }
    }
}

/// What becomes of the message's KV cancel flag once the job is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CancelFlag {
    Keep,
    /// The cancel was handled: the flag is ours to remove.
    Clear,
    /// Removed if a cancel notice came after the answer was complete (a
    /// no-op, but its flag is ours to remove).
    ClearIfCancelled,
}

/// What a job did, for its metrics and its one log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Report {
    /// `None`: the job was skipped, not finished, on this worker.
    pub(crate) outcome: Option<Outcome>,
    pub(crate) detail: &'static str,
    pub(crate) chunks: u32,
    pub(crate) tokens: u64,
}

impl Report {
    pub(crate) fn new(outcome: Option<Outcome>, detail: &'static str) -> Self {
        Self {
            outcome,
            detail,
            chunks: 0,
            tokens: 0,
        }
    }
}

/// How a generation stopped.
#[derive(Debug)]
pub(crate) enum Stop {
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
#[derive(Debug)]
pub(crate) struct Generated {
    pub(crate) stop: Stop,
    pub(crate) text: String,
    pub(crate) chunks: u32,
    pub(crate) tokens: u64,
    /// `reasoning` events published (the next one's `index`).
    pub(crate) reasoning: u32,
    /// Characters of reasoning: recorded in the turn, not in its text.
    pub(crate) reasoning_chars: u64,
}

/// The attempt being ended: what the endings name in their events.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attempt {
    pub(crate) message_id: MessageId,
    pub(crate) number: u32,
    /// The work-queue's delivery limit: the last attempt dead-letters.
    pub(crate) max_deliver: i64,
}

/// The pause before a job whose events NATS did not take (its connection
/// was lost, its stream had no leader) is tried again. Not the job's fault,
/// so not a growing pause: after a nats-server restart, a job at its third
/// attempt waited 2 s more than one at its first (`chatctl recovery`: a
/// 3 s stall). The lease is kept while the job is held, so a quick hand-back
/// cannot meet a copy of itself.
pub(crate) const NATS_RETRY_DELAY: Duration = Duration::from_millis(250);

impl Attempt {
    /// A growing pause before a job that failed for a passing reason is
    /// tried again.
    pub(crate) fn retry_delay(&self) -> Duration {
        let exp = self.number.saturating_sub(1).min(6);
        (Duration::from_millis(500) * (1 << exp)).min(Duration::from_secs(30))
    }
}

/// What a user reads when the model server refuses an answer; the server's
/// own text goes to the worker's log only.
pub(crate) const MODEL_REFUSED: &str =
    "The model could not answer this message. Try again or rephrase it.";

impl Ending {
    /// An ending that stores nothing and publishes nothing.
    fn quiet(ack: QueueReply, report: Report) -> Self {
        Self {
            outstanding: Outstanding::Abandon,
            free_slot_early: false,
            terminal: None,
            dead_letter: None,
            turn: None,
            hold_until_writable: false,
            ack,
            cancel_flag: CancelFlag::Keep,
            report,
        }
    }

    /// An ending that closes the answer: terminal event, then the turn.
    fn closing(terminal: Event, turn: Answer, ack: QueueReply, report: Report) -> Self {
        Self {
            outstanding: Outstanding::MustBeStored,
            free_slot_early: true,
            terminal: Some(terminal),
            dead_letter: None,
            turn: Some(turn),
            hold_until_writable: false,
            ack,
            cancel_flag: CancelFlag::Keep,
            report,
        }
    }

    /// The session already has this message's answer (an earlier attempt
    /// stored it, and its ack was lost): ack it, publish nothing.
    /// A later attempt claimed the message before this one started: the
    /// job is left to it (no ack, no nak).
    pub(crate) fn taken_over() -> Self {
        Self::quiet(
            QueueReply::Leave,
            Report::new(None, "taken over by another worker"),
        )
    }

    pub(crate) fn already_answered() -> Self {
        Self::quiet(QueueReply::Ack, Report::new(None, "already answered"))
    }

    /// An earlier attempt stored this message's terminal event but not its
    /// turn (nor its ack): record the turn it stored, publish nothing.
    /// Only a cancelled answer had a flag to remove: deleting one that was
    /// never set would leave a delete marker, a cancel key no user made.
    pub(crate) fn answer_already_stored(answer: Answer) -> Self {
        let cancel_flag = if answer.status == TurnStatus::Cancelled {
            CancelFlag::Clear
        } else {
            CancelFlag::Keep
        };
        Self {
            turn: Some(answer),
            cancel_flag,
            ..Self::quiet(QueueReply::Ack, Report::new(None, "answer already stored"))
        }
    }

    /// The session's stream could not be read before generating (its
    /// leader is moving): whether an answer is stored already is unknown,
    /// so the job goes back and is tried again shortly, never generated
    /// blind (issue 14: a message answered twice after a leader was lost).
    pub(crate) fn stream_unreadable(attempt: Attempt) -> Self {
        Self::quiet(
            QueueReply::Nak(Some(attempt.retry_delay())),
            Report::new(
                Some(Outcome::Redelivered),
                "the session's stream was unreadable",
            ),
        )
    }

    /// A cancel came before the first chunk.
    pub(crate) fn cancelled_before_start(attempt: Attempt) -> Self {
        Self {
            free_slot_early: false,
            cancel_flag: CancelFlag::Clear,
            ..Self::closing(
                Event::Cancelled {
                    message_id: attempt.message_id,
                },
                Answer::unfinished(TurnStatus::Cancelled, String::new()),
                QueueReply::Ack,
                Report::new(Some(Outcome::Cancelled), "cancelled before start"),
            )
        }
    }

    /// The request names a model this worker's backend does not serve.
    pub(crate) fn unknown_model(attempt: Attempt, model: &str) -> Self {
        Self {
            free_slot_early: false,
            ..Self::closing(
                Event::Error {
                    message_id: Some(attempt.message_id),
                    code: ErrorCode::BadRequest,
                    message: format!("this service does not serve the model {model:?}"),
                },
                Answer::unfinished(TurnStatus::Failed, String::new()),
                QueueReply::Term,
                Report::new(Some(Outcome::Failed), "unknown model"),
            )
        }
    }

    /// How an attempt that generated ends, from how its generation stopped.
    pub(crate) fn after_generation(generated: Generated, attempt: Attempt) -> Self {
        let Generated {
            stop,
            text,
            chunks,
            tokens,
            reasoning: _,
            reasoning_chars,
        } = generated;
        let id = attempt.message_id;
        let report = |outcome, detail| Report {
            outcome,
            detail,
            chunks,
            tokens,
        };
        match stop {
            Stop::Finished {
                finish_reason,
                usage,
            } => Self {
                cancel_flag: CancelFlag::ClearIfCancelled,
                ..Self::closing(
                    Event::Done {
                        message_id: id,
                        attempt: attempt.number,
                        finish_reason: finish_reason.clone(),
                        usage,
                    },
                    Answer {
                        status: TurnStatus::Done,
                        text,
                        finish_reason: Some(finish_reason),
                        usage,
                        reasoning_chars,
                    },
                    QueueReply::Ack,
                    report(Some(Outcome::Done), "answered"),
                )
            },
            Stop::Cancelled => Self {
                cancel_flag: CancelFlag::Clear,
                ..Self::closing(
                    Event::Cancelled { message_id: id },
                    Answer::unfinished(TurnStatus::Cancelled, text).with_reasoning(reasoning_chars),
                    QueueReply::Ack,
                    report(Some(Outcome::Cancelled), "cancelled while generating"),
                )
            },
            Stop::Backend(BackendError::Rejected(reason)) => {
                // The server's words stay in the log: they can carry what the
                // user must not see (OpenAI's 401 names a masked key suffix).
                tracing::warn!(reason = %reason, "the model refused the request");
                Self::closing(
                    Event::Error {
                        message_id: Some(id),
                        code: ErrorCode::ModelFailed,
                        message: MODEL_REFUSED.to_string(),
                    },
                    Answer::unfinished(TurnStatus::Failed, text).with_reasoning(reasoning_chars),
                    QueueReply::Term,
                    report(Some(Outcome::Failed), "model refused"),
                )
            }
            Stop::Backend(BackendError::Unavailable {
                message,
                retry_after,
            }) if i64::from(attempt.number) < attempt.max_deliver => {
                tracing::info!(error = %message, "model unavailable; retrying later");
                Self {
                    outstanding: Outstanding::Settle,
                    ..Self::quiet(
                        QueueReply::Nak(Some(retry_after.unwrap_or_else(|| attempt.retry_delay()))),
                        report(Some(Outcome::Redelivered), "model unavailable"),
                    )
                }
            }
            Stop::Backend(BackendError::Unavailable { message, .. }) => Self {
                outstanding: Outstanding::Settle,
                free_slot_early: false,
                terminal: Some(dead_letter::exhausted_event(id, u64::from(attempt.number))),
                dead_letter: Some(format!(
                    "the model stayed unavailable for {} attempts: {message}",
                    attempt.number
                )),
                turn: Some(Answer::unfinished(TurnStatus::Failed, String::new())),
                hold_until_writable: false,
                ack: QueueReply::Term,
                cancel_flag: CancelFlag::Keep,
                report: report(Some(Outcome::DeadLettered), "retries exhausted"),
            },
            Stop::Publish(e) => {
                tracing::warn!(error = %e, "events not stored; handing the job back");
                Self {
                    hold_until_writable: true,
                    ..Self::quiet(
                        QueueReply::Nak(Some(NATS_RETRY_DELAY)),
                        report(Some(Outcome::Redelivered), "publish failed"),
                    )
                }
            }
            // Nothing is published: the next attempt announces `restart`.
            Stop::Aborted => Self::quiet(
                QueueReply::Nak(None),
                report(Some(Outcome::Redelivered), "shutdown"),
            ),
            Stop::Superseded => Self::quiet(
                QueueReply::Leave,
                report(None, "taken over by another worker"),
            ),
        }
    }
}

#[cfg(test)]
mod tests;
