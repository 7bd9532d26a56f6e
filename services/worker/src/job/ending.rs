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
    /// "already answered" check cover a lost one).
    pub(crate) async fn send(self, message: &jetstream::Message) {
        let (sent, consequence) = match self {
            QueueReply::Ack => (
                message.double_ack().await,
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
}

/// The attempt being ended: what the endings name in their events.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attempt {
    pub(crate) message_id: MessageId,
    pub(crate) number: u32,
    /// The work-queue's delivery limit: the last attempt dead-letters.
    pub(crate) max_deliver: i64,
}

impl Attempt {
    /// A growing pause before a job that failed for a passing reason is
    /// tried again.
    pub(crate) fn retry_delay(&self) -> Duration {
        let exp = self.number.saturating_sub(1).min(6);
        (Duration::from_millis(500) * (1 << exp)).min(Duration::from_secs(30))
    }
}

impl Ending {
    /// An ending that stores nothing and publishes nothing.
    fn quiet(ack: QueueReply, report: Report) -> Self {
        Self {
            outstanding: Outstanding::Abandon,
            free_slot_early: false,
            terminal: None,
            dead_letter: None,
            turn: None,
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
            ack,
            cancel_flag: CancelFlag::Keep,
            report,
        }
    }

    /// The session already has this message's answer (an earlier attempt
    /// stored it, and its ack was lost): ack it, publish nothing.
    pub(crate) fn already_answered() -> Self {
        Self::quiet(QueueReply::Ack, Report::new(None, "already answered"))
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
                    },
                    QueueReply::Ack,
                    report(Some(Outcome::Done), "answered"),
                )
            },
            Stop::Cancelled => Self {
                cancel_flag: CancelFlag::Clear,
                ..Self::closing(
                    Event::Cancelled { message_id: id },
                    Answer::unfinished(TurnStatus::Cancelled, text),
                    QueueReply::Ack,
                    report(Some(Outcome::Cancelled), "cancelled while generating"),
                )
            },
            Stop::Backend(BackendError::Rejected(reason)) => Self::closing(
                Event::Error {
                    message_id: Some(id),
                    code: ErrorCode::ModelFailed,
                    message: reason,
                },
                Answer::unfinished(TurnStatus::Failed, text),
                QueueReply::Term,
                report(Some(Outcome::Failed), "model refused"),
            ),
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
                ack: QueueReply::Term,
                cancel_flag: CancelFlag::Keep,
                report: report(Some(Outcome::DeadLettered), "retries exhausted"),
            },
            Stop::Publish(e) => {
                tracing::warn!(error = %e, "events not stored; handing the job back");
                Self::quiet(
                    QueueReply::Nak(Some(attempt.retry_delay())),
                    report(Some(Outcome::Redelivered), "publish failed"),
                )
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
mod tests {
    use protocol::EventKind;

    use super::*;

    const MAX_DELIVER: i64 = 3;

    fn attempt(number: u32) -> Attempt {
        Attempt {
            message_id: "7d3f0a3e-3c1b-4d55-9a43-2f4b52c1a0de".parse().unwrap(),
            number,
            max_deliver: MAX_DELIVER,
        }
    }

    fn generated(stop: Stop) -> Generated {
        Generated {
            stop,
            text: "partial answer".into(),
            chunks: 4,
            tokens: 9,
        }
    }

    fn unavailable(retry_after: Option<Duration>) -> Stop {
        Stop::Backend(BackendError::Unavailable {
            message: "503".into(),
            retry_after,
        })
    }

    /// The columns a reader checks: terminal event kind, turn status, ack,
    /// cancel flag, outcome.
    fn row(
        ending: &Ending,
    ) -> (
        Option<EventKind>,
        Option<TurnStatus>,
        QueueReply,
        CancelFlag,
        Option<Outcome>,
    ) {
        (
            ending.terminal.as_ref().map(Event::kind),
            ending.turn.as_ref().map(|t| t.status),
            ending.ack,
            ending.cancel_flag,
            ending.report.outcome,
        )
    }

    #[test]
    fn endings_before_generation() {
        let a = attempt(1);
        assert_eq!(
            row(&Ending::already_answered()),
            (None, None, QueueReply::Ack, CancelFlag::Keep, None)
        );
        assert_eq!(
            row(&Ending::cancelled_before_start(a)),
            (
                Some(EventKind::Cancelled),
                Some(TurnStatus::Cancelled),
                QueueReply::Ack,
                CancelFlag::Clear,
                Some(Outcome::Cancelled)
            )
        );
        let unknown = Ending::unknown_model(a, "gpt-9");
        assert_eq!(
            row(&unknown),
            (
                Some(EventKind::Error),
                Some(TurnStatus::Failed),
                QueueReply::Term,
                CancelFlag::Keep,
                Some(Outcome::Failed)
            )
        );
        assert!(matches!(
            unknown.terminal,
            Some(Event::Error { code: ErrorCode::BadRequest, ref message, .. }) if message.contains("gpt-9")
        ));
        // Nothing was generated: no slot to free early, empty turns.
        for ending in [Ending::cancelled_before_start(a), unknown] {
            assert!(!ending.free_slot_early);
            assert_eq!(ending.turn.unwrap().text, "");
        }
    }

    #[test]
    fn a_finished_answer_is_done_recorded_and_acked() {
        let ending = Ending::after_generation(
            generated(Stop::Finished {
                finish_reason: FinishReason::Length,
                usage: None,
            }),
            attempt(2),
        );
        assert_eq!(
            row(&ending),
            (
                Some(EventKind::Done),
                Some(TurnStatus::Done),
                QueueReply::Ack,
                CancelFlag::ClearIfCancelled,
                Some(Outcome::Done)
            )
        );
        assert!(matches!(
            ending.terminal,
            Some(Event::Done {
                attempt: 2,
                finish_reason: FinishReason::Length,
                ..
            })
        ));
        let turn = ending.turn.unwrap();
        assert_eq!(turn.text, "partial answer");
        assert_eq!(turn.finish_reason, Some(FinishReason::Length));
        assert_eq!(ending.outstanding, Outstanding::MustBeStored);
        assert!(ending.free_slot_early);
        assert_eq!((ending.report.chunks, ending.report.tokens), (4, 9));
    }

    #[test]
    fn cancelled_and_refused_answers_keep_their_text() {
        let cancelled = Ending::after_generation(generated(Stop::Cancelled), attempt(1));
        assert_eq!(
            row(&cancelled),
            (
                Some(EventKind::Cancelled),
                Some(TurnStatus::Cancelled),
                QueueReply::Ack,
                CancelFlag::Clear,
                Some(Outcome::Cancelled)
            )
        );
        let refused = Ending::after_generation(
            generated(Stop::Backend(BackendError::Rejected("bad model".into()))),
            attempt(1),
        );
        assert_eq!(
            row(&refused),
            (
                Some(EventKind::Error),
                Some(TurnStatus::Failed),
                QueueReply::Term,
                CancelFlag::Keep,
                Some(Outcome::Failed)
            )
        );
        assert!(matches!(
            refused.terminal,
            Some(Event::Error { code: ErrorCode::ModelFailed, ref message, .. }) if message == "bad model"
        ));
        for ending in [cancelled, refused] {
            assert_eq!(ending.outstanding, Outstanding::MustBeStored);
            assert!(ending.free_slot_early);
            assert_eq!(ending.turn.unwrap().text, "partial answer");
        }
    }

    #[test]
    fn an_unavailable_model_is_retried_until_the_last_delivery_then_dead_lettered() {
        let retried = Ending::after_generation(generated(unavailable(None)), attempt(2));
        assert_eq!(
            row(&retried),
            (
                None,
                None,
                QueueReply::Nak(Some(Duration::from_secs(1))),
                CancelFlag::Keep,
                Some(Outcome::Redelivered)
            )
        );
        assert_eq!(retried.outstanding, Outstanding::Settle);
        let told = Ending::after_generation(
            generated(unavailable(Some(Duration::from_secs(7)))),
            attempt(1),
        );
        assert_eq!(told.ack, QueueReply::Nak(Some(Duration::from_secs(7))));

        let last = Ending::after_generation(generated(unavailable(None)), attempt(3));
        assert_eq!(
            row(&last),
            (
                Some(EventKind::Error),
                Some(TurnStatus::Failed),
                QueueReply::Term,
                CancelFlag::Keep,
                Some(Outcome::DeadLettered)
            )
        );
        assert!(matches!(
            last.terminal,
            Some(Event::Error {
                code: ErrorCode::RetriesExhausted,
                ..
            })
        ));
        assert!(last.dead_letter.unwrap().contains("3 attempts: 503"));
        assert_eq!(last.turn.unwrap().text, "", "a dead letter stores no text");
        assert_eq!(last.outstanding, Outstanding::Settle);
        assert!(!last.free_slot_early);
    }

    #[test]
    fn endings_that_hand_the_job_on_publish_nothing() {
        let publish = Ending::after_generation(
            generated(Stop::Publish(PublishFailed("gone".into()))),
            attempt(1),
        );
        let aborted = Ending::after_generation(generated(Stop::Aborted), attempt(1));
        let superseded = Ending::after_generation(generated(Stop::Superseded), attempt(1));
        assert_eq!(
            publish.ack,
            QueueReply::Nak(Some(Duration::from_millis(500)))
        );
        assert_eq!(
            aborted.ack,
            QueueReply::Nak(None),
            "a shutdown hands back at once"
        );
        assert_eq!(
            superseded.ack,
            QueueReply::Leave,
            "the job is another worker's"
        );
        assert_eq!(publish.report.outcome, Some(Outcome::Redelivered));
        assert_eq!(aborted.report.outcome, Some(Outcome::Redelivered));
        assert_eq!(superseded.report.outcome, None);
        for ending in [publish, aborted, superseded] {
            assert_eq!(ending.outstanding, Outstanding::Abandon);
            assert!(!ending.free_slot_early);
            assert_eq!((ending.terminal, ending.turn), (None, None));
            assert_eq!(ending.dead_letter, None);
            assert_eq!(ending.report.chunks, 4);
        }
    }

    #[test]
    fn the_retry_delay_doubles_from_half_a_second_up_to_thirty() {
        let delays: Vec<_> = [1, 2, 3, 7, 8, 50]
            .map(|n| attempt(n).retry_delay().as_millis())
            .into();
        assert_eq!(delays, [500, 1000, 2000, 30_000, 30_000, 30_000]);
    }
}
