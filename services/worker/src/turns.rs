//! Recording an answered message: the turn in the session's history
//! (`CHAT_HISTORY`) and the message's entry in the session record (KV).
//! Both the job steps and dead-lettering end a message this way.
//!
//! The record moves in two writes: [`mark_ending`] frees the message's
//! in-flight slot before its terminal event is stored, and [`record`] moves it
//! from `active` to `recent` once its turn is stored. A redelivery reads
//! either write as "already answered", never the slot alone.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use protocol::records::{Turn, TurnStatus};
use protocol::{sessions, subjects, ChatRequest, Event, FinishReason, Usage};
use tokio::time::Instant;

use crate::context::JobContext;
use crate::publish::{once_per_message, publish_and_wait, PublishFailed};

/// How long the writes after an answer (history turn, session record) are
/// retried: longer than a nats-server restart takes.
const RECORD_RETRY_FOR: Duration = Duration::from_secs(15);

/// The worker's half of a turn: how the answer ended and what it said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: TurnStatus,
    pub(crate) text: String,
    pub(crate) finish_reason: Option<FinishReason>,
    pub(crate) usage: Option<Usage>,
    /// Characters of the model's reasoning (not part of `text`).
    pub(crate) reasoning_chars: u64,
}

impl Answer {
    /// An answer that ended without finishing (cancelled or failed).
    pub(crate) fn unfinished(status: TurnStatus, text: String) -> Self {
        Self {
            status,
            text,
            finish_reason: None,
            usage: None,
            reasoning_chars: 0,
        }
    }

    pub(crate) fn with_reasoning(self, reasoning_chars: u64) -> Self {
        Self {
            reasoning_chars,
            ..self
        }
    }

    /// The answer one message's stored events hold, if they end in a
    /// terminal event, with the attempt it belongs to: the last attempt's
    /// chunks (a `restart` drops the earlier ones), its reasoning's length,
    /// and the terminal event's status.
    pub(crate) fn from_stored(events: &[Event]) -> Option<(u32, Self)> {
        let terminal = events.iter().rev().find(|e| e.is_terminal())?;
        let attempt = events
            .iter()
            .filter_map(|e| match e {
                Event::Chunk { attempt, .. }
                | Event::Reasoning { attempt, .. }
                | Event::Restart { attempt, .. }
                | Event::Done { attempt, .. } => Some(*attempt),
                _ => None,
            })
            .max()
            .unwrap_or(1);
        let mut text = String::new();
        let mut reasoning_chars = 0u64;
        for event in events {
            match event {
                Event::Chunk {
                    attempt: a,
                    text: t,
                    ..
                } if *a == attempt => text.push_str(t),
                Event::Reasoning {
                    attempt: a,
                    text: t,
                    ..
                } if *a == attempt => {
                    reasoning_chars += t.chars().count() as u64;
                }
                _ => {}
            }
        }
        let answer = match terminal {
            Event::Done {
                finish_reason,
                usage,
                ..
            } => Self {
                status: TurnStatus::Done,
                text,
                finish_reason: Some(finish_reason.clone()),
                usage: *usage,
                reasoning_chars: 0,
            },
            Event::Cancelled { .. } => Self::unfinished(TurnStatus::Cancelled, text),
            _ => Self::unfinished(TurnStatus::Failed, text),
        };
        Some((attempt, answer.with_reasoning(reasoning_chars)))
    }
}

/// Publishes a finished turn to the session's history (deduplicated on the
/// message id, so a repeated attempt cannot store two) and moves the message
/// from `active` to `recent` in the session record.
pub(crate) async fn record(
    ctx: &JobContext,
    request: &ChatRequest,
    attempt: u32,
    answer: Answer,
) -> Result<(), PublishFailed> {
    let turn = Turn {
        message_id: request.message_id,
        user: request.content.clone(),
        assistant: answer.text,
        status: answer.status,
        created_at: request.accepted_at_ms,
        finished_at: protocol::now_ms(),
        attempt,
        finish_reason: answer.finish_reason,
        usage: answer.usage,
        user_seq: request.user_seq,
        reasoning_chars: answer.reasoning_chars,
        replaces: request.replaces,
    };
    let payload: bytes::Bytes = serde_json::to_vec(&turn)?.into();
    // The answer's terminal event is stored already: ride out a NATS blip
    // rather than hand the job back to be answered twice. Deduplicated on
    // the message id, so a retry of a write that did land stores nothing.
    retry_for_a_while("storing the turn", || {
        publish_and_wait(
            &ctx.js,
            subjects::history(request.session_id),
            once_per_message(payload.clone(), request.session_id, request.message_id),
        )
    })
    .await?;
    finish_session(ctx, request).await;
    Ok(())
}

/// Marks the message finished in its session record. A failure is logged,
/// not fatal: the turn is stored (it marks the message answered too), and
/// the record's stale entries expire.
async fn finish_session(ctx: &JobContext, request: &ChatRequest) {
    let id = request.message_id;
    let finished = retry_for_a_while("finishing the session record", || async {
        let result = sessions::update(&ctx.layout.sessions, request.session_id, |r| {
            Ok::<_, Infallible>(r.finish(id))
        })
        .await;
        match result {
            Ok(Ok(record)) => {
                announce_finished(ctx, request, record.owner.as_ref()).await;
                Ok(())
            }
            Ok(Err(never)) => match never {},
            Err(sessions::SessionStoreError::NotFound) => {
                tracing::debug!("session record gone; nothing to finish");
                Ok(())
            }
            Err(e) => Err(e),
        }
    })
    .await;
    if let Err(e) = finished {
        tracing::warn!(error = %e, "finishing the session record");
    }
}

/// Tells the owner's devices (`GATEWAY_AUTH=jwt`) that the session's
/// answer finished, for their live session lists. Core NATS, best effort:
/// the list itself is the truth.
async fn announce_finished(
    ctx: &JobContext,
    request: &ChatRequest,
    owner: Option<&protocol::UserKey>,
) {
    let Some(owner) = owner else {
        return;
    };
    let notice = protocol::users::UserNotice::Session {
        change: protocol::users::SessionChange::AnswerFinished,
        session_id: request.session_id,
        session: None,
    };
    if let Err(e) = ctx
        .js
        .client()
        .publish(subjects::user_feed(owner), notice.to_payload())
        .await
    {
        tracing::debug!(error = %e, "announcing a finished answer");
    }
}

/// Frees the message's in-flight slot in the session record before its
/// terminal event is stored, so a client that sends its next question the
/// moment `done` arrives is never refused for a message that has ended.
/// It stays out of `recent` until [`record`] (what marks it answered for a
/// redelivery), and a failed write is left to [`record`] too.
pub(crate) async fn mark_ending(ctx: &JobContext, request: &ChatRequest) {
    let id = request.message_id;
    let marked = sessions::update(&ctx.layout.sessions, request.session_id, |r| {
        Ok::<_, Infallible>(r.mark_ending(id))
    })
    .await;
    if let Err(e) = marked {
        tracing::debug!(error = %e, "releasing the in-flight slot early");
    }
}

/// Runs `write` until it succeeds or [`RECORD_RETRY_FOR`] has passed, with a
/// pause growing from 100 ms to 1 s between tries; returns the last error.
async fn retry_for_a_while<E: Display, F: Future<Output = Result<(), E>>>(
    what: &'static str,
    mut write: impl FnMut() -> F,
) -> Result<(), E> {
    let deadline = Instant::now() + RECORD_RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "{what}; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::MessageId;

    fn chunk(id: MessageId, attempt: u32, index: u32, text: &str) -> Event {
        Event::Chunk {
            message_id: id,
            attempt,
            index,
            text: text.into(),
            published_at_us: None,
        }
    }

    #[test]
    fn a_stored_answer_is_its_last_attempts_text_with_the_terminal_status() {
        let id = MessageId::new();
        let mut events = vec![
            chunk(id, 1, 0, "half an "),
            Event::Restart {
                message_id: id,
                attempt: 2,
            },
            Event::Reasoning {
                message_id: id,
                attempt: 2,
                index: 0,
                text: "hmm".into(),
                published_at_us: None,
            },
            chunk(id, 2, 0, "whole "),
            chunk(id, 2, 1, "answer"),
        ];
        assert!(
            Answer::from_stored(&events).is_none(),
            "no terminal, no answer"
        );
        events.push(Event::Done {
            message_id: id,
            attempt: 2,
            finish_reason: FinishReason::Stop,
            usage: None,
        });
        let (attempt, answer) = Answer::from_stored(&events).unwrap();
        assert_eq!(attempt, 2);
        assert_eq!(answer.status, TurnStatus::Done);
        assert_eq!(answer.text, "whole answer");
        assert_eq!(answer.reasoning_chars, 3);
        events.pop();
        events.push(Event::Cancelled { message_id: id });
        let (_, cancelled) = Answer::from_stored(&events).unwrap();
        assert_eq!(cancelled.status, TurnStatus::Cancelled);
        assert_eq!(cancelled.text, "whole answer");
    }
}
