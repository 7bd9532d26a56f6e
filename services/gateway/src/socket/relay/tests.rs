//! The relay's sequence bookkeeping without a server: frames go to a `Vec`,
//! stored events come from a fake stream that records every read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use protocol::frames::{with_seq, ControlFrame};
use protocol::{CloseCode, ErrorCode, Event, EventKind, MessageId};

use super::{Relay, REPLAY_FAILED, REPLAY_PAGE};
use crate::error::ApiError;
use crate::live::LiveEvent;
use crate::replay::{Position, StoredEvents};
use crate::socket::outbox::Outbox;
use crate::socket::End;

/// A session's subject in a stream shared with other sessions: its
/// sequences have holes that are other sessions' events.
const SESSION_SEQS: [u64; 6] = [3, 5, 9, 10, 14, 20];

fn payload(seq: u64) -> bytes::Bytes {
    Event::Chunk {
        message_id: MessageId::new(),
        attempt: 1,
        index: u32::try_from(seq).unwrap(),
        text: format!("piece {seq}"),
        published_at_us: None,
    }
    .to_payload()
}

/// The session's stored events; `first_available` moves as the stream's
/// limits discard old ones. Reads can be made to come back short (a replica
/// behind) or to fail (NATS trouble).
#[derive(Default)]
struct FakeStream {
    stored: BTreeMap<u64, String>,
    first_available: u64,
    /// Reads return nothing above this (a replica behind).
    applied_through: Mutex<Option<u64>>,
    fail_reads: bool,
    reads: Mutex<Vec<(u64, u64)>>,
}

impl FakeStream {
    fn holding(seqs: &[u64]) -> Self {
        Self {
            stored: seqs
                .iter()
                .map(|&seq| (seq, with_seq(&payload(seq), seq).unwrap()))
                .collect(),
            first_available: 1,
            ..Self::default()
        }
    }

    fn reads(&self) -> Vec<(u64, u64)> {
        self.reads.lock().unwrap().clone()
    }

    fn last_seq(&self) -> u64 {
        self.stored.keys().last().copied().unwrap_or(0)
    }
}

impl StoredEvents for Arc<FakeStream> {
    async fn position(&self, after_seq: Option<u64>) -> Result<Position, ApiError> {
        let last_seq = self.last_seq();
        if after_seq.is_some_and(|after| after > last_seq) {
            return Err(ApiError::BadRequest("after_seq is beyond the end".into()));
        }
        Ok(Position {
            last_seq,
            expired: after_seq.is_some_and(|after| after + 1 < self.first_available),
            first_available: self.first_available,
        })
    }

    async fn frames(
        &self,
        from: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, ApiError> {
        self.reads.lock().unwrap().push((from, until));
        if self.fail_reads {
            return Err(ApiError::nats("no responders"));
        }
        let until = match *self.applied_through.lock().unwrap() {
            Some(applied) => until.min(applied),
            None => until,
        };
        Ok(self
            .stored
            .range(from.max(self.first_available)..)
            .take_while(|(&seq, _)| seq <= until)
            .take(limit)
            .map(|(&seq, frame)| (seq, frame.clone()))
            .collect())
    }

    async fn expired_notice(&self, last_seq: u64) -> Result<[ControlFrame; 2], ApiError> {
        Ok([
            ControlFrame::error(ErrorCode::ReplayExpired, "expired"),
            ControlFrame::History {
                turns: Vec::new(),
                last_seq,
            },
        ])
    }
}

type TestRelay = Relay<Vec<Message>, Arc<FakeStream>>;

fn relay(stream: &Arc<FakeStream>, start_after: u64) -> TestRelay {
    let outbox = Outbox::new(Vec::new(), Duration::from_secs(1));
    Relay::new(outbox, stream.clone(), start_after)
}

/// The event with sequence `seq` as it arrives live, `prev` being the
/// session's sequence before it (`Nats-Last-Sequence`).
fn live(seq: u64, prev: u64) -> LiveEvent {
    LiveEvent {
        seq,
        prev,
        frame: Utf8Bytes::from(with_seq(&payload(seq), seq).unwrap()),
        kind: Some(EventKind::Chunk),
    }
}

/// What the client got: `seq` for an event, the `type` for a control frame.
fn sent(relay: &TestRelay) -> Vec<String> {
    relay
        .outbox
        .sink()
        .iter()
        .map(|message| {
            let Message::Text(text) = message else {
                panic!("not a text frame: {message:?}");
            };
            let frame: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            match frame.get("seq") {
                Some(seq) => seq.to_string(),
                None => frame["type"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

fn seqs(seqs: &[u64]) -> Vec<String> {
    seqs.iter().map(u64::to_string).collect()
}

#[tokio::test]
async fn live_events_are_sent_in_order_without_reading_the_stream() {
    let stream = Arc::new(FakeStream::holding(&SESSION_SEQS));
    let mut relay = relay(&stream, 0);
    let mut prev = 0;
    for seq in SESSION_SEQS {
        relay.live(&live(seq, prev)).await.unwrap();
        prev = seq;
    }
    assert_eq!(sent(&relay), seqs(&SESSION_SEQS));
    assert_eq!(relay.last_sent(), 20);
    assert!(stream.reads().is_empty(), "{:?}", stream.reads());
}

#[tokio::test]
async fn a_live_event_already_replayed_is_not_sent_again() {
    let stream = Arc::new(FakeStream::holding(&SESSION_SEQS[..4]));
    // A client that had everything up to 5 attaches: 9 and 10 are replayed,
    // and arrive live as well (the subscription came before the read).
    let mut relay = relay(&stream, 5);
    let position = stream.position(Some(5)).await.unwrap();
    relay.start_after(5, position).await.unwrap();
    relay.live(&live(9, 5)).await.unwrap();
    relay.live(&live(10, 9)).await.unwrap();
    relay.live(&live(14, 10)).await.unwrap();
    relay.live(&live(10, 9)).await.unwrap();
    assert_eq!(sent(&relay), seqs(&[9, 10, 14]));
    assert_eq!(stream.reads(), vec![(6, 10)]);
}

#[tokio::test]
async fn a_gap_revealed_by_the_previous_sequence_is_read_from_the_stream_first() {
    let stream = Arc::new(FakeStream::holding(&SESSION_SEQS));
    let mut relay = relay(&stream, 0);
    relay.live(&live(3, 0)).await.unwrap();
    // 5, 9 and 10 were lost on the way; 14 says its predecessor is 10.
    relay.live(&live(14, 10)).await.unwrap();
    relay.live(&live(20, 14)).await.unwrap();
    assert_eq!(sent(&relay), seqs(&SESSION_SEQS));
    assert_eq!(stream.reads(), vec![(4, 10)], "one read of the hole");
}

#[tokio::test]
async fn a_hole_the_stream_does_not_fill_closes_the_socket_rather_than_skip() {
    let stream = Arc::new(FakeStream::holding(&SESSION_SEQS));
    // The replica read lags behind for good: 5 is known to exist, never read.
    *stream.applied_through.lock().unwrap() = Some(3);
    let mut relay = relay(&stream, 3);
    let end = relay.live(&live(9, 5)).await.unwrap_err();
    assert!(
        matches!(end, End::Close(CloseCode::TryAgainLater, reason) if reason.contains("after_seq")),
        "closed with 1013 so the client resumes"
    );
    assert!(sent(&relay).is_empty(), "nothing after the hole was sent");
    assert_eq!(stream.reads().len(), 4, "retried: {:?}", stream.reads());
}

#[tokio::test]
async fn a_read_that_catches_up_on_retry_fills_the_hole() {
    let stream = Arc::new(FakeStream::holding(&SESSION_SEQS));
    *stream.applied_through.lock().unwrap() = Some(3);
    let mut relay = relay(&stream, 3);
    let lagging = stream.clone();
    let replica = tokio::spawn(async move {
        // The replica applies the write while the relay waits to retry.
        while lagging.reads().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        *lagging.applied_through.lock().unwrap() = None;
    });
    relay.live(&live(9, 5)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), replica)
        .await
        .expect("the hole was read at least once")
        .unwrap();
    assert_eq!(sent(&relay), seqs(&[5, 9]));
    assert!(stream.reads().len() >= 2, "{:?}", stream.reads());
}

#[tokio::test]
async fn falling_behind_the_ring_catches_up_from_recent_events_then_drops_the_rings_copies() {
    let stream = Arc::new(FakeStream::holding(&SESSION_SEQS));
    let mut relay = relay(&stream, 0);
    relay.live(&live(3, 0)).await.unwrap();
    relay.live(&live(5, 3)).await.unwrap();
    // The ring moved on; the session's recent events still hold 3..20.
    let recent: Vec<Arc<LiveEvent>> = [(3, 0), (5, 3), (9, 5), (10, 9), (14, 10), (20, 14)]
        .into_iter()
        .map(|(seq, prev)| Arc::new(live(seq, prev)))
        .filter(|event| event.seq > relay.last_sent())
        .collect();
    relay.catch_up(recent).await.unwrap();
    // What the ring still delivers afterwards was sent already.
    relay.live(&live(14, 10)).await.unwrap();
    relay.live(&live(20, 14)).await.unwrap();
    assert_eq!(sent(&relay), seqs(&SESSION_SEQS));
    assert!(stream.reads().is_empty(), "{:?}", stream.reads());
}

#[tokio::test]
async fn recent_events_that_do_not_reach_back_are_completed_from_the_stream() {
    let stream = Arc::new(FakeStream::holding(&SESSION_SEQS));
    let mut relay = relay(&stream, 0);
    relay.live(&live(3, 0)).await.unwrap();
    // Only the last two are still among the recent events.
    let recent = vec![Arc::new(live(14, 10)), Arc::new(live(20, 14))];
    relay.catch_up(recent).await.unwrap();
    assert_eq!(sent(&relay), seqs(&SESSION_SEQS));
    assert_eq!(stream.reads(), vec![(4, 10)]);
}

#[tokio::test]
async fn resume_replays_after_after_seq_even_what_was_sent_then_carries_on_live() {
    let stream = Arc::new(FakeStream::holding(&SESSION_SEQS[..5]));
    let mut relay = relay(&stream, 0);
    let mut prev = 0;
    for seq in &SESSION_SEQS[..5] {
        relay.live(&live(*seq, prev)).await.unwrap();
        prev = *seq;
    }
    relay.resume(9).await.unwrap();
    assert_eq!(relay.last_sent(), 14);
    relay.live(&live(14, 10)).await.unwrap();
    relay.live(&live(20, 14)).await.unwrap();
    assert_eq!(sent(&relay), seqs(&[3, 5, 9, 10, 14, 10, 14, 20]));
    assert_eq!(stream.reads(), vec![(10, 14)]);
}

#[tokio::test]
async fn replay_from_before_the_window_sends_replay_expired_and_history_first() {
    let mut stream = FakeStream::holding(&SESSION_SEQS);
    stream.first_available = 8;
    let stream = Arc::new(stream);
    let mut relay = relay(&stream, 0);
    relay.resume(3).await.unwrap();
    let mut expected = vec!["error".to_string(), "history".to_string()];
    expected.extend(seqs(&[9, 10, 14, 20]));
    assert_eq!(sent(&relay), expected);
    assert_eq!(stream.reads(), vec![(8, 20)]);
}

#[tokio::test]
async fn attach_and_resume_share_one_replay_but_fail_differently() {
    let stream = Arc::new(FakeStream {
        fail_reads: true,
        ..FakeStream::holding(&SESSION_SEQS)
    });
    let mut relay = relay(&stream, 3);
    let position = stream.position(Some(3)).await.unwrap();
    // Attaching with after_seq: the socket closes, the client reconnects.
    let end = relay.start_after(3, position).await.unwrap_err();
    assert!(matches!(
        end,
        End::Close(CloseCode::TryAgainLater, REPLAY_FAILED)
    ));
    // A resume frame: an error frame, and the socket carries on.
    relay.resume(3).await.unwrap();
    assert_eq!(sent(&relay), vec!["error".to_string()]);
    assert_eq!(stream.reads(), vec![(4, 20), (4, 20)]);
}

#[tokio::test]
async fn a_lost_last_event_is_read_at_the_second_quiet_tail_check() {
    let stream = Arc::new(FakeStream::holding(&SESSION_SEQS));
    let mut relay = relay(&stream, 14);
    // 20 was stored but never arrived live: the first check only suspects it.
    let suspect = relay.check_tail(None).await.unwrap();
    assert_eq!(suspect, Some(20));
    assert!(sent(&relay).is_empty());
    assert_eq!(relay.check_tail(suspect).await.unwrap(), None);
    assert_eq!(sent(&relay), seqs(&[20]));
    assert_eq!(stream.reads(), vec![(15, 20)]);
    // Once it is sent, a quiet socket costs no read.
    assert_eq!(relay.check_tail(None).await.unwrap(), None);
    assert_eq!(stream.reads().len(), 1);
}

#[tokio::test]
async fn a_long_replay_is_read_and_sent_a_page_at_a_time() {
    // A session longer than three pages (every other sequence is another
    // session's): the replay reads page after page, each starting after
    // the last one sent, and sends every event once, in order.
    let seqs: Vec<u64> = (1..=(REPLAY_PAGE as u64 * 3 + 100))
        .map(|i| i * 2)
        .collect();
    let stream = Arc::new(FakeStream::holding(&seqs));
    let mut relay = relay(&stream, 0);
    relay.resume(0).await.unwrap();
    assert_eq!(sent(&relay), self::seqs(&seqs));
    let last = *seqs.last().unwrap();
    let page_starts: Vec<u64> = [0, 1, 2, 3]
        .iter()
        .map(|page| {
            if *page == 0 {
                1
            } else {
                seqs[page * REPLAY_PAGE - 1] + 1
            }
        })
        .collect();
    let expected: Vec<(u64, u64)> = page_starts.iter().map(|&from| (from, last)).collect();
    assert_eq!(stream.reads(), expected, "four reads of a page each");
}
