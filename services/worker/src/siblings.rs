//! Answers to other messages of the same session, streaming beside this one.
//!
//! Some writes are stored only right after the session's last event as the
//! attempt's admit step read it (compare-and-set on the session's subject):
//! its first event, its `restart`, a terminal event decided before
//! generating. What that fence keeps out is another run of the *same*
//! message storing in between (see `job/fence.rs`). But an answer to
//! another question of the session (asked while the first one streams)
//! moves the subject too, a chunk every few milliseconds. Reading the whole
//! admit step again lost that race each time on a loaded machine, and the
//! job was handed back: an answer nobody had run before came as attempt 2,
//! with a needless `restart`.
//!
//! So a refused write first reads what was stored since its fence. When
//! none of it is this message's, the same write is fenced again right after
//! it, at once: one read and one publish, not a whole admit step. Only an
//! event of this message (or one that cannot be read) sends the attempt
//! back to its admit step.

use std::time::Instant;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, message::PublishMessage, stream::Stream};
use bytes::Bytes;
use protocol::{stored, Event, MessageId};

/// Writes fenced again past other messages' events before the attempt
/// reads its admit step again. Each costs one read and one publish; other
/// answers stream for seconds at most, so a write that still loses after
/// this many has no quiet moment to wait for.
pub(crate) const REFENCES: usize = 100;

/// Events read past the fence at once: more than any answer stores while
/// one read and one publish are on their way.
const READ_LIMIT: usize = 512;

/// Whether a write was refused because its fence no longer held: the
/// subject's last sequence is not the one expected. JetStream reports it
/// by kind, or (from a clustered stream's leader) by code only.
pub(crate) fn is_moved(e: &PublishError) -> bool {
    e.kind() == PublishErrorKind::WrongLastSequence
        || protocol::conflicts::is_wrong_last_sequence(e)
}

/// A session's subject in `CHAT_EVENTS`, as one message's run writes to it.
pub(crate) struct SessionSubject<'a> {
    pub(crate) js: &'a jetstream::Context,
    pub(crate) events: &'a Stream,
    pub(crate) subject: &'a str,
    /// The message the run answers; `None` re-fences nothing.
    pub(crate) message: Option<MessageId>,
}

impl SessionSubject<'_> {
    /// Stores `payload` only right after the session's event at `after`;
    /// when that is refused because only other messages' events were
    /// stored since, again right after them, up to [`REFENCES`] times. The
    /// last refusal is returned as it came. `Ok` holds the ack and when the
    /// publish it answers was sent.
    pub(crate) async fn publish_right_after(
        &self,
        payload: Bytes,
        mut after: u64,
    ) -> Result<(PublishAck, Instant), PublishError> {
        let mut refences = 0;
        loop {
            let fenced = PublishMessage::build()
                .payload(payload.clone())
                .expected_last_subject_sequence(after);
            let sent_at = Instant::now();
            let stored = async {
                self.js
                    .send_publish(self.subject.to_string(), fenced)
                    .await?
                    .await
            };
            match stored.await {
                Ok(ack) => return Ok((ack, sent_at)),
                Err(e) if is_moved(&e) && refences < REFENCES => {
                    let Some(later) = self.past_siblings(after).await else {
                        return Err(e);
                    };
                    tracing::debug!(after, later, "another answer moved the session's stream");
                    after = later;
                    refences += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The subject's last sequence as read now, when every event stored
    /// after `after` is another message's. `None` when one is this
    /// message's or not an event, when nothing newer is visible (a replica
    /// behind answered: the admit step reads again, patiently), or when the
    /// stream cannot be read.
    async fn past_siblings(&self, after: u64) -> Option<u64> {
        let mine = self.message?;
        let read = stored::read_range(
            &self.js.client(),
            self.events,
            self.subject,
            after + 1,
            u64::MAX,
            READ_LIMIT,
        )
        .await;
        let stored = match read {
            Ok(stored) => stored,
            Err(e) => {
                tracing::debug!(error = %e, "reading past the fence");
                return None;
            }
        };
        let last = stored.last()?.seq;
        let all_siblings = stored.iter().all(|s| {
            serde_json::from_slice::<Event>(&s.payload)
                .ok()
                .and_then(|event| event.message_id())
                .is_some_and(|id| id != mine)
        });
        all_siblings.then_some(last)
    }
}
