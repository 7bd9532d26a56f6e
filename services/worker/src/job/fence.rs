//! Storing a terminal event only while this attempt still owns its message.
//!
//! A job's lease can pass to another worker while this one still runs it
//! without knowing: its progress acks went to a consumer leader that died
//! (a NATS node lost in a cluster), so after `ack_wait` the job was
//! delivered again, and the new attempt announced `restart` on the
//! session's stream. Its core claim notice is best-effort (lost while this
//! worker's connection is cut, or racing this attempt's last step). Found
//! by `chatctl recovery --cluster`: `restart a2`, then `done a1`, then a
//! whole second answer. The stream is the truth: the terminal event is
//! stored only if no later attempt of this message has stored anything
//! since its question, and only if nothing was stored after that check
//! (compare-and-set on the subject's last sequence).

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use protocol::{stored, subjects, Event};

use super::Job;
use crate::publish::PublishFailed;

/// Checks and compare-and-set publishes before giving up: another message
/// of the same session may store events in between.
const TRIES: usize = 10;
/// The pause before reading again when a replica lagged the other read.
const LAGGING_REPLICA_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// What became of a terminal event.
pub(super) enum Fenced {
    /// Stored now, or by an earlier try whose ack was lost.
    Stored,
    /// A later attempt owns the message: nothing was stored.
    Superseded,
}

impl Job {
    pub(super) async fn store_terminal(&self, terminal: &Event) -> Result<Fenced, PublishFailed> {
        let subject = subjects::events(self.request.session_id);
        let id = self.message_id();
        for _ in 0..TRIES {
            let last = self
                .ctx
                .layout
                .events
                .direct_get_last_for_subject(subject.clone())
                .await
                .map_err(|e| PublishFailed(format!("reading the session's last event: {e}")))?;
            let read = stored::read_range(
                &self.ctx.js.client(),
                &self.ctx.layout.events,
                &subject,
                self.request.user_seq + 1,
                last.sequence,
                // One message's events: bounded by the answer's size limit.
                usize::MAX,
            )
            .await
            .map_err(|e| PublishFailed(format!("reading the message's events: {e}")))?;
            if !stored::reaches(&read, self.request.user_seq + 1, last.sequence) {
                // The two reads came from replicas at different points:
                // the range is not the truth yet (seen on a cluster as
                // `done a1` stored twice).
                tokio::time::sleep(LAGGING_REPLICA_PAUSE).await;
                continue;
            }
            let mine = read
                .iter()
                .filter_map(|s| serde_json::from_slice::<Event>(&s.payload).ok())
                .filter(|e| e.message_id() == Some(id));
            for event in mine {
                match event {
                    Event::Restart { attempt, .. }
                    | Event::Chunk { attempt, .. }
                    | Event::Reasoning { attempt, .. }
                        if attempt > self.attempt() =>
                    {
                        return Ok(Fenced::Superseded)
                    }
                    e if e.is_terminal() => return Ok(Fenced::Stored),
                    _ => {}
                }
            }
            let message = PublishMessage::build()
                .payload(terminal.to_payload())
                .expected_last_subject_sequence(last.sequence);
            let acked = match self.ctx.js.send_publish(subject.clone(), message).await {
                Ok(ack) => ack.await,
                Err(e) => return Err(e.into()),
            };
            match acked {
                Ok(_) => return Ok(Fenced::Stored),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(e) if protocol::conflicts::is_wrong_last_sequence(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PublishFailed(format!(
            "the session's stream kept moving: no terminal event stored in {TRIES} tries"
        )))
    }
}
