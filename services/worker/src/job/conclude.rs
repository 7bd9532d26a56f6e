//! The conclude step: carries out an [`Ending`], the one place where a job
//! stores what it owes its session and answers the work-queue.
//!
//! The order is the design: free the in-flight slot while the outstanding
//! chunks are acknowledged, then the terminal event, then the history turn
//! and the session record, and only then the ack. A job is acked only once
//! everything it owes the session is stored; a failure on the way fails the
//! attempt, and the job is handed back.

use super::ending::{CancelFlag, Ending, Outstanding, Report};
use super::fence::{Fenced, TerminalFence};
use super::{Job, JobError};
use crate::cancel::CancelGuard;
use crate::publish::{EventPublisher, PublishFailed};
use crate::{cancel, dead_letter, turns};

impl Job {
    /// Ends the attempt as `ending` says; `publisher` holds the chunks of an
    /// attempt that generated; its terminal event is stored only while
    /// `fence` holds. [`JobError::StreamMoved`] when it does not for an
    /// ending decided before generating: nothing is stored or answered.
    pub(super) async fn conclude(
        &self,
        ending: Ending,
        publisher: Option<EventPublisher>,
        guard: &CancelGuard,
        fence: TerminalFence,
    ) -> Result<Report, JobError> {
        let ctx = &self.ctx;
        let free_slot = async {
            if ending.free_slot_early {
                turns::mark_ending(ctx, &self.request).await;
            }
        };
        let (settled, ()) = tokio::join!(settle(publisher, ending.outstanding), free_slot);
        settled?;
        if let Some(terminal) = &ending.terminal {
            match self.store_terminal(terminal, fence).await? {
                Fenced::Stored => {}
                Fenced::Superseded => {
                    // The later attempt owns the message, its ack included.
                    tracing::warn!("a later attempt took this message over; stopping silently");
                    return Ok(Report::new(None, "superseded by a later attempt"));
                }
                Fenced::Moved => {
                    tracing::info!("the session's stream moved on; reading it again");
                    return Err(JobError::StreamMoved);
                }
            }
        }
        if let Some(reason) = &ending.dead_letter {
            dead_letter::store(ctx, &self.request, reason, u64::from(self.attempt())).await?;
        }
        if let Some(answer) = ending.turn {
            turns::record(ctx, &self.request, self.attempt(), answer).await?;
        }
        if ending.hold_until_writable {
            // Its lease is kept meanwhile (`keeping_the_lease`), so no copy
            // of the job is delivered while it is held.
            self.hold_until_writable().await;
        }
        self.reply(ending.ack).await;
        let clear_flag = match ending.cancel_flag {
            CancelFlag::Keep => false,
            CancelFlag::Clear => true,
            CancelFlag::ClearIfCancelled => guard.token().is_cancelled(),
        };
        if clear_flag {
            let session = self.request.session_id;
            cancel::clear_flag(&ctx.layout.sessions, session, self.message_id()).await;
        }
        Ok(ending.report)
    }
}

/// Deals with the chunks still being acknowledged as `outstanding` says.
async fn settle(
    publisher: Option<EventPublisher>,
    outstanding: Outstanding,
) -> Result<(), PublishFailed> {
    let Some(publisher) = publisher else {
        return Ok(());
    };
    match outstanding {
        Outstanding::MustBeStored => publisher.finish().await,
        Outstanding::Settle => {
            if let Err(e) = publisher.finish().await {
                tracing::debug!(error = %e, "events of a failed attempt");
            }
            Ok(())
        }
        Outstanding::Abandon => Ok(()),
    }
}
