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
    let range = read_range(
        &client,
        &layout.events,
        &subjects::events(a),
        2,
        6,
        usize::MAX,
    )
    .await
    .unwrap();
    assert_eq!(range.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![3, 6]);
    let until = read_range(
        &client,
        &layout.events,
        &subjects::events(b),
        1,
        4,
        usize::MAX,
    )
    .await
    .unwrap();
    assert_eq!(until.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![2, 4]);
    assert!(read_range(
        &client,
        &layout.events,
        &subjects::events(a),
        7,
        6,
        usize::MAX
    )
    .await
    .unwrap()
    .is_empty());
    assert!(read_turns(&client, &layout.history, a, 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn ranges_longer_than_a_batch_read_every_message_of_the_subject_once() {
    let server = NatsServer::start().unwrap();
    let client = server.connect().await.unwrap();
    let js = jetstream::new(client.clone());
    let layout = ensure(&js, &LayoutConfig::default()).await.unwrap();
    let (a, b) = (SessionId::new(), SessionId::new());
    let mut acks = Vec::new();
    let mut a_seqs = Vec::new();
    // 1,500 events of `a` (three batches) interleaved with 500 of `b`.
    for i in 0..2_000u32 {
        let session = if i % 4 == 3 { b } else { a };
        let ev = Event::Chunk {
            message_id: MessageId::new(),
            attempt: 1,
            index: i,
            text: "z".repeat(64),
            published_at_us: None,
        };
        acks.push((
            session,
            js.publish(subjects::events(session), ev.to_payload())
                .await
                .unwrap(),
        ));
    }
    for (session, ack) in acks {
        let seq = ack.await.unwrap().sequence;
        if session == a {
            a_seqs.push(seq);
        }
    }
    let all = read_range(
        &client,
        &layout.events,
        &subjects::events(a),
        1,
        2_000,
        usize::MAX,
    )
    .await
    .unwrap();
    assert_eq!(all.iter().map(|s| s.seq).collect::<Vec<_>>(), a_seqs);
    // A window inside: from and until are inclusive, other subjects skipped.
    let (from, until) = (a_seqs[100], a_seqs[1_300]);
    let window = read_range(
        &client,
        &layout.events,
        &subjects::events(a),
        from,
        until,
        usize::MAX,
    )
    .await
    .unwrap();
    assert_eq!(
        window.iter().map(|s| s.seq).collect::<Vec<_>>(),
        a_seqs[100..=1_300].to_vec()
    );
    let first: Event = serde_json::from_slice(&window[0].payload).unwrap();
    assert!(matches!(first, Event::Chunk { index, .. } if index == (from - 1) as u32));

    // Pages: at most `limit` messages each, the next from the last + 1,
    // together every message once.
    let mut paged = Vec::new();
    let mut next = 1;
    loop {
        let page = read_range(
            &client,
            &layout.events,
            &subjects::events(a),
            next,
            2_000,
            100,
        )
        .await
        .unwrap();
        assert!(page.len() <= 100, "a page of {}", page.len());
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        paged.extend(page.iter().map(|s| s.seq));
    }
    assert_eq!(paged, a_seqs);
}
