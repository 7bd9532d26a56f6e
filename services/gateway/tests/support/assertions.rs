//! What the tests check about a stream of events and a REST answer.

use std::time::Duration;

use protocol::frames::SequencedEvent;
use protocol::{ErrorCode, Event, EventKind, MessageId};
use serde_json::Value;

use super::WAIT;

/// The text of `message`'s last attempt (a retried run streams again).
pub fn answer(events: &[SequencedEvent], message: MessageId) -> String {
    let chunks = || {
        events.iter().filter_map(move |e| match &e.event {
            Event::Chunk {
                message_id,
                attempt,
                text,
                ..
            } if *message_id == message => Some((*attempt, text.as_str())),
            _ => None,
        })
    };
    let last_attempt = chunks().map(|(attempt, _)| attempt).max().unwrap_or(1);
    chunks()
        .filter(|(attempt, _)| *attempt == last_attempt)
        .map(|(_, text)| text)
        .collect()
}

/// How many of `events` are of `kind`.
pub fn count(events: &[SequencedEvent], kind: EventKind) -> usize {
    events.iter().filter(|e| e.event.kind() == kind).count()
}

pub fn assert_strictly_increasing(events: &[SequencedEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "seq not strictly increasing: {} then {}",
            pair[0].seq,
            pair[1].seq
        );
    }
}

/// A REST error: `status`, and the JSON body `{"error": {"code": ...}}`.
pub async fn assert_rest_error(response: reqwest::Response, status: u16, code: ErrorCode) {
    assert_eq!(response.status(), status, "{}", response.url());
    let body: Value = response.json().await.unwrap();
    let got: ErrorCode = serde_json::from_value(body["error"]["code"].clone()).unwrap();
    assert_eq!(got, code, "{body}");
}

/// Waits until `check` holds, polling; fails the test after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
