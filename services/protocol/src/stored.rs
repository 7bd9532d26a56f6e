//! Reading back what a stream stores for one session: the events a
//! reconnecting client missed, and the finished turns of a conversation.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::{
    consumer::{pull::OrderedConfig, DeliverPolicy},
    stream::Stream,
};
use bytes::Bytes;
use futures::StreamExt;

use crate::ids::SessionId;
use crate::records::Turn;
use crate::subjects;

/// One stored message: its sequence in the stream and its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("reading {subject}: {source}")]
pub struct ReadError {
    subject: String,
    source: async_nats::Error,
}

/// How long one read may wait for the server before it is given up: a read
/// that hangs must not hold a client's reconnect forever.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The sequence of the last message stored on `subject`, or 0 when it has none.
pub async fn last_seq(stream: &Stream, subject: &str) -> Result<u64, ReadError> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(message.sequence),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(0),
        Err(e) => Err(ReadError {
            subject: subject.into(),
            source: e.into(),
        }),
    }
}

/// Every message on `subject` with `from_seq <= seq <= until_seq`, in order,
/// through a short-lived ordered consumer (deleted when it drops).
pub async fn read_range(
    stream: &Stream,
    subject: &str,
    from_seq: u64,
    until_seq: u64,
) -> Result<Vec<Stored>, ReadError> {
    let fail = |e: async_nats::Error| ReadError {
        subject: subject.into(),
        source: e,
    };
    let from_seq = from_seq.max(1);
    if until_seq < from_seq {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from_seq,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| fail(e.into()))?;
    let mut messages = consumer.messages().await.map_err(|e| fail(e.into()))?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(READ_TIMEOUT, messages.next())
            .await
            .map_err(|e| fail(e.into()))?;
        let Some(message) = next else { break };
        let message = message.map_err(|e| fail(e.into()))?;
        let info = message.info().map_err(fail)?;
        let seq = info.stream_sequence;
        let pending = info.pending;
        if seq > until_seq {
            break;
        }
        out.push(Stored {
            seq,
            payload: message.payload.clone(),
        });
        if seq == until_seq || pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// The last `max_turns` finished turns of a session, oldest first.
pub async fn read_turns(
    history: &Stream,
    session: SessionId,
    max_turns: usize,
) -> Result<Vec<Turn>, ReadError> {
    let subject = subjects::history(session);
    let last = last_seq(history, &subject).await?;
    if last == 0 || max_turns == 0 {
        return Ok(Vec::new());
    }
    let mut turns = VecDeque::with_capacity(max_turns.min(256));
    for stored in read_range(history, &subject, 1, last).await? {
        // A record this version cannot read is skipped, not fatal: history
        // is for display and context, and the rest of it is still good.
        if let Ok(turn) = serde_json::from_slice::<Turn>(&stored.payload) {
            if turns.len() == max_turns {
                turns.pop_front();
            }
            turns.push_back(turn);
        }
    }
    Ok(turns.into())
}
