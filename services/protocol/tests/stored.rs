//! Reading a session's stored events back, and the republish headers the
//! gateway's gap detection relies on, on a real nats-server.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use async_nats::jetstream;
use futures::StreamExt;
use protocol::setup::{ensure, LayoutConfig};
use protocol::stored::{last_seq, read_range, read_turns};
use protocol::{subjects, Event, MessageId, SessionId};
use stack::nats::NatsServer;

#[tokio::test]
async fn republish_chains_each_event_to_the_previous_one_of_its_session() {
    let server = NatsServer::start().unwrap();
    let client = server.connect().await.unwrap();
    let js = jetstream::new(client.clone());
    let layout = ensure(&js, &LayoutConfig::default()).await.unwrap();
    let (a, b) = (SessionId::new(), SessionId::new());
    let mut live = client.subscribe(subjects::live(a)).await.unwrap();
    client.flush().await.unwrap();

    let mut a_seqs = Vec::new();
    for (i, session) in [a, b, a, b, b, a].into_iter().enumerate() {
        let ev = Event::Cancelled {
            message_id: MessageId::new(),
        };
        let ack = js
            .publish(subjects::events(session), ev.to_payload())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.sequence, i as u64 + 1);
        if session == a {
            a_seqs.push(ack.sequence);
        }
    }
    let mut previous = 0;
    for expected in &a_seqs {
        let msg = live.next().await.unwrap();
        let headers = msg.headers.unwrap();
        let seq: u64 = headers
            .get(subjects::HEADER_SEQUENCE)
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let last: u64 = headers
            .get(subjects::HEADER_LAST_SEQUENCE)
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        assert_eq!(seq, *expected);
        assert_eq!(
            last, previous,
            "Nats-Last-Sequence is the session's previous event"
        );
        previous = seq;
    }

    assert_eq!(
        last_seq(&layout.events, &subjects::events(a))
            .await
            .unwrap(),
        6
    );
    assert_eq!(
        last_seq(&layout.events, &subjects::events(SessionId::new()))
            .await
            .unwrap(),
        0
    );
    let range = read_range(&layout.events, &subjects::events(a), 2, 6)
        .await
        .unwrap();
    assert_eq!(range.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![3, 6]);
    let until = read_range(&layout.events, &subjects::events(b), 1, 4)
        .await
        .unwrap();
    assert_eq!(until.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![2, 4]);
    assert!(read_range(&layout.events, &subjects::events(a), 7, 6)
        .await
        .unwrap()
        .is_empty());
    assert!(read_turns(&layout.history, a, 10).await.unwrap().is_empty());
}
