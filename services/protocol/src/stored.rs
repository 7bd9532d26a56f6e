//! Reading back what a stream stores for one session: the events a
//! reconnecting client missed, and the finished turns of a conversation.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

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

/// The sequence of the last message stored on `subject` as the stream's
/// leader holds it, or 0 when it has none. A direct get
/// ([`last_seq`]) may be answered by a replica that has not applied the
/// newest writes (one behind a lossy link, or catching up after a
/// restart); this one is answered by the leader only, for a read that
/// must see every write acknowledged before it.
pub async fn last_seq_at_leader(stream: &Stream, subject: &str) -> Result<u64, ReadError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(message.sequence),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(ReadError {
            subject: subject.into(),
            source: e.into(),
        }),
    }
}

/// Messages asked for in one direct-get batch.
const BATCH: u64 = 512;
/// Bytes the server may send in reply to one batch request.
const BATCH_MAX_BYTES: usize = 4 << 20;

/// The messages on `subject` with `from_seq <= seq <= until_seq`, in order,
/// at most `limit` of them (a page: read the next one from the last
/// sequence + 1), through batched direct gets (ADR-31): no consumer is
/// created, so thousands of sockets catching up at once cost the server
/// reads, not JetStream API calls. Each batch is bounded in messages and
/// bytes, and no more than `limit` messages are asked for, so memory is
/// bounded by the page, never by the session's length. The stream needs
/// `allow_direct`.
///
/// A direct get may be answered by a replica that has not applied the
/// newest writes yet, so the result can end early; callers that know a
/// sequence must be there check for it (see the gateway's gap repair).
pub async fn read_range(
    client: &Client,
    stream: &Stream,
    subject: &str,
    from_seq: u64,
    until_seq: u64,
    limit: usize,
) -> Result<Vec<Stored>, ReadError> {
    let fail = |e: async_nats::Error| ReadError {
        subject: subject.into(),
        source: e,
    };
    let api = subjects::direct_get(&stream.cached_info().config.name);
    let mut out = Vec::new();
    let mut next = from_seq.max(1);
    while next <= until_seq && out.len() < limit {
        let wanted = u64::try_from(limit - out.len()).unwrap_or(u64::MAX);
        let batch = Batch {
            seq: next,
            next_by_subj: subject,
            batch: (until_seq - next + 1).min(BATCH).min(wanted),
            max_bytes: BATCH_MAX_BYTES,
        };
        let request = serde_json::to_vec(&batch).map_err(|e| fail(e.into()))?;
        let inbox = client.new_inbox();
        // Subscribing first: the server sees the SUB before the request.
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| fail(e.into()))?;
        client
            .publish_with_reply(api.clone(), inbox, request.into())
            .await
            .map_err(|e| fail(e.into()))?;
        let mut more = false;
        let mut received = 0u64;
        loop {
            let reply = tokio::time::timeout(READ_TIMEOUT, replies.next())
                .await
                .map_err(|e| fail(e.into()))?
                .ok_or_else(|| fail("direct get replies ended early".into()))?;
            match reply.status.map(u16::from) {
                None => {
                    let seq = header_u64(&reply, subjects::HEADER_SEQUENCE)
                        .ok_or_else(|| fail("direct get reply without Nats-Sequence".into()))?;
                    received += 1;
                    if seq > until_seq {
                        // Past the range: nothing after it is wanted.
                        next = u64::MAX;
                        continue;
                    }
                    out.push(Stored {
                        seq,
                        payload: reply.payload,
                    });
                    next = seq + 1;
                }
                // End of batch: more match if it says some are pending.
                Some(204) => {
                    more = header_u64(&reply, subjects::HEADER_NUM_PENDING).unwrap_or(0) > 0;
                    break;
                }
                // Nothing (more) on the subject from `seq` on.
                Some(404) => break,
                Some(code) => {
                    return Err(fail(
                        format!("direct get of {subject} answered with status {code}").into(),
                    ))
                }
            }
        }
        if !more || received == 0 {
            break;
        }
    }
    Ok(out)
}

#[derive(Serialize)]
struct Batch<'a> {
    seq: u64,
    next_by_subj: &'a str,
    batch: u64,
    max_bytes: usize,
}

/// Whether a range read from `from_seq` holds the event at `last_seq`, the
/// subject's last sequence as known from another read. A direct get may be
/// answered by a replica that lags: a range that stops short of a sequence
/// known to exist is not the truth yet, and deciding on it (nothing stored
/// for this message) stores a second answer. An empty span is complete.
pub fn reaches(read: &[Stored], from_seq: u64, last_seq: u64) -> bool {
    last_seq < from_seq || read.last().map(|s| s.seq) == Some(last_seq)
}

/// A numeric header of a message (`Nats-Sequence`, `Nats-Last-Sequence`, …).
pub fn header_u64(message: &async_nats::Message, name: &str) -> Option<u64> {
    message.headers.as_ref()?.get(name)?.as_str().parse().ok()
}

/// The last `max_turns` finished turns of a session, oldest first. Read a
/// page at a time, keeping only the last `max_turns`: memory is bounded by
/// those and one page. `CHAT_HISTORY` keeps at most `CHAT_HISTORY_MAX_TURNS`
/// turns per session, so the read itself is bounded too.
pub async fn read_turns(
    client: &Client,
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
    let mut from = 1;
    loop {
        let page = read_range(client, history, &subject, from, last, TURNS_PAGE).await?;
        let Some(end) = page.last().map(|s| s.seq) else {
            break;
        };
        for stored in &page {
            // A record this version cannot read is skipped, not fatal:
            // history is for display and context, and the rest is good.
            if let Ok(turn) = serde_json::from_slice::<Turn>(&stored.payload) {
                if turns.len() == max_turns {
                    turns.pop_front();
                }
                turns.push_back(turn);
            }
        }
        if page.len() < TURNS_PAGE || end >= last {
            break;
        }
        from = end + 1;
    }
    Ok(turns.into())
}

/// Turns read at a time by [`read_turns`].
const TURNS_PAGE: usize = 64;

/// The finished turn of `message` in the session's history, if it is there.
/// The last turn is read first: a regenerate names the session's last
/// question, whose turn is nearly always the last one recorded.
pub async fn find_turn(
    client: &Client,
    history: &Stream,
    session: SessionId,
    message: crate::ids::MessageId,
    max_turns: usize,
) -> Result<Option<Turn>, ReadError> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    let subject = subjects::history(session);
    match history.direct_get_last_for_subject(&subject).await {
        Ok(last) => {
            if let Ok(turn) = serde_json::from_slice::<Turn>(&last.payload) {
                if turn.message_id == message {
                    return Ok(Some(turn));
                }
            }
        }
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ReadError {
                subject,
                source: e.into(),
            })
        }
    }
    let turns = read_turns(client, history, session, max_turns).await?;
    Ok(turns.into_iter().rev().find(|t| t.message_id == message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_short_of_the_known_last_sequence_is_not_the_truth() {
        let stored = |seq| Stored {
            seq,
            payload: Bytes::new(),
        };
        assert!(reaches(&[stored(4), stored(9)], 3, 9));
        assert!(!reaches(&[stored(4)], 3, 9), "a lagging replica's range");
        assert!(!reaches(&[], 3, 9));
        assert!(reaches(&[], 10, 9), "nothing to read");
    }
}
