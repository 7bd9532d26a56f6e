//! The pipelined event publisher against a real nats-server: `finish` is
//! `Ok` only when every event is stored, in order; a publish JetStream does
//! not store fails the attempt.

mod support;

use protocol::{subjects, Event, MessageId, SessionId};
use support::{wait_until, Harness};
use worker::publish::{EventPublisher, FirstEvent, ACK_WINDOW};

fn chunk(message_id: MessageId, index: u32) -> Event {
    Event::Chunk {
        message_id,
        attempt: 1,
        index,
        text: format!("token {index} "),
        published_at_us: None,
    }
}

#[tokio::test]
async fn every_event_is_stored_in_order_before_finish_returns() {
    let h = Harness::start(5_000, 4).await;
    let session = SessionId::new();
    let message_id = MessageId::new();
    let mut publisher = publisher(&h, subjects::events(session)).await;
    // More than one window of acks, so the publisher waits for some.
    let count = u32::try_from(ACK_WINDOW * 3 + 7).unwrap();
    for index in 0..count {
        publisher.publish(&chunk(message_id, index)).await.unwrap();
    }
    publisher.finish().await.unwrap();
    let stored = h.stored_events(session).await;
    let expected: Vec<Event> = (0..count).map(|i| chunk(message_id, i)).collect();
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn after_a_lost_connection_every_event_is_stored_once_in_order() {
    // nats-server restarts with acks outstanding: the publisher reads back
    // what the stream holds and sends again only what it does not. If the
    // client held back publishes of the old connection and sent them on
    // the new one after a lost earlier one (a hole), the stream cannot be
    // mended in order: the publisher says so (the worker then starts the
    // attempt over), and nothing is stored twice or out of order.
    let mut h = Harness::start(5_000, 4).await;
    let session = SessionId::new();
    let message_id = MessageId::new();
    let mut publisher = publisher(&h, subjects::events(session)).await;
    let count = 300;
    for index in 0..100 {
        publisher.publish(&chunk(message_id, index)).await.unwrap();
    }
    // Frozen, the server acks nothing: these wait with their acks
    // outstanding (some may be stored when it goes, some not).
    h.server.freeze().unwrap();
    for index in 100..150 {
        publisher.publish(&chunk(message_id, index)).await.unwrap();
    }
    h.server.restart().unwrap();
    let rest = async {
        for index in 150..count {
            publisher.publish(&chunk(message_id, index)).await?;
        }
        publisher.finish().await
    };
    let published = rest.await;
    h.reconnect().await;
    let stored = h.stored_events(session).await;
    let expected: Vec<Event> = (0..count).map(|i| chunk(message_id, i)).collect();
    match published {
        Ok(()) => assert_eq!(stored, expected),
        Err(e) => {
            assert!(e.0.contains("a later event is stored"), "{e}");
            let indexes: Vec<u32> = stored
                .iter()
                .filter_map(|e| match e {
                    Event::Chunk { index, .. } => Some(*index),
                    _ => None,
                })
                .collect();
            assert!(
                indexes.windows(2).all(|w| w[0] < w[1]),
                "stored twice or out of order: {indexes:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_connection_lost_with_every_ack_in_goes_on_at_once() {
    // Nothing outstanding when nats-server restarts: the next event goes
    // out on the new connection, after the stream took the old ones.
    let mut h = Harness::start(5_000, 4).await;
    let session = SessionId::new();
    let message_id = MessageId::new();
    let mut publisher = publisher(&h, subjects::events(session)).await;
    for index in 0..10 {
        publisher.publish(&chunk(message_id, index)).await.unwrap();
    }
    wait_until(|| async { h.stored_events(session).await.len() == 10 }).await;
    h.server.restart().unwrap();
    // Bounded: an ack task left waiting for a sender that never closes
    // would hang here.
    let rest = async {
        for index in 10..20 {
            publisher.publish(&chunk(message_id, index)).await.unwrap();
        }
        publisher.finish().await.unwrap();
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), rest)
        .await
        .expect("the publisher hung after the lost connection");
    h.reconnect().await;
    let stored = h.stored_events(session).await;
    let expected: Vec<Event> = (0..20).map(|i| chunk(message_id, i)).collect();
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn a_publish_no_stream_stores_fails_the_attempt() {
    let h = Harness::start(5_000, 4).await;
    let message_id = MessageId::new();
    // No stream captures this subject: the server answers "no responders".
    let mut publisher = publisher(&h, "chat.nowhere.1".to_string()).await;
    let first = publisher.publish(&chunk(message_id, 0)).await;
    let finished = match first {
        Ok(()) => publisher.finish().await,
        Err(e) => Err(e),
    };
    let error = finished.expect_err("an event no stream stored must fail the attempt");
    assert!(error.0.contains("no responders"), "{error}");
}

#[tokio::test]
async fn a_publish_the_stream_refuses_fails_the_attempt() {
    let h = Harness::start(5_000, 4).await;
    let message_id = MessageId::new();
    let stream =
        h.js.create_stream(async_nats::jetstream::stream::Config {
            name: "PUBLISH_TEST_FULL".into(),
            subjects: vec!["publish.full".into()],
            max_messages: 2,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut publisher = publisher(&h, "publish.full".to_string()).await;
    let mut failed = None;
    for index in 0..3 {
        if let Err(e) = publisher.publish(&chunk(message_id, index)).await {
            failed = Some(e);
            break;
        }
    }
    let error = match failed {
        Some(e) => e,
        None => publisher
            .finish()
            .await
            .expect_err("the third event was refused"),
    };
    assert!(error.0.contains("refused"), "{error}");
    drop(stream);
}

#[tokio::test]
async fn a_fenced_first_event_is_stored_only_right_after_what_was_read() {
    // Two runs of one message that both count themselves first: the one
    // whose read is stale must store nothing, and learn that it must read
    // again, even behind another message's event.
    let h = Harness::start(5_000, 4).await;
    let session = SessionId::new();
    let message_id = MessageId::new();
    let subject = subjects::events(session);
    let sibling = chunk(MessageId::new(), 0);
    h.store_event(session, &sibling).await;
    let other_run = chunk(message_id, 0);
    let other_run_seq = h.store_event(session, &other_run).await;

    // Read before both were stored (the subject was empty).
    let mut stale = publisher_with(&h, subject.clone(), FirstEvent::RightAfter(0)).await;
    assert!(stale.publish(&chunk(message_id, 0)).await.is_err());
    assert!(stale.stream_moved());
    assert_eq!(stale.unstored_first(), Some(0));
    let stored_before = vec![sibling, other_run];
    assert_eq!(h.stored_events(session).await, stored_before);

    // Read after them: the first event and every one behind it are stored.
    let next_question = MessageId::new();
    let mut current = publisher_with(&h, subject, FirstEvent::RightAfter(other_run_seq)).await;
    for index in 0..10 {
        current.publish(&chunk(next_question, index)).await.unwrap();
    }
    assert!(!current.stream_moved());
    assert_eq!(current.unstored_first(), None);
    current.finish().await.unwrap();
    let mut expected = stored_before;
    expected.extend((0..10).map(|i| chunk(next_question, i)));
    assert_eq!(h.stored_events(session).await, expected);
}

#[tokio::test]
async fn a_fenced_first_event_steps_past_other_messages_events() {
    // Another question of the session is answered beside this one: its
    // events stored since the read do not stop this answer's first event.
    let h = Harness::start(5_000, 4).await;
    let session = SessionId::new();
    let subject = subjects::events(session);
    let sibling = MessageId::new();
    let siblings: Vec<Event> = (0..3).map(|i| chunk(sibling, i)).collect();
    for event in &siblings {
        h.store_event(session, event).await;
    }

    let message_id = MessageId::new();
    let mut publisher = publisher_with(&h, subject, FirstEvent::RightAfter(0)).await;
    for index in 0..5 {
        publisher.publish(&chunk(message_id, index)).await.unwrap();
    }
    assert!(!publisher.stream_moved());
    assert_eq!(publisher.unstored_first(), None);
    publisher.finish().await.unwrap();
    let mut expected = siblings;
    expected.extend((0..5).map(|i| chunk(message_id, i)));
    assert_eq!(h.stored_events(session).await, expected);
}

/// A publisher on a connection of its own, watched for losses as a
/// worker's is; as the harness, since some tests publish where no stream
/// (or a scratch one) listens.
async fn publisher(h: &Harness, subject: impl Into<String>) -> EventPublisher {
    publisher_with(h, subject, FirstEvent::Anywhere).await
}

/// [`publisher`], its first event stored as `first` says.
async fn publisher_with(
    h: &Harness,
    subject: impl Into<String>,
    first: FirstEvent,
) -> EventPublisher {
    let (options, connection) = protocol::connect::options("publish-test");
    let options = h
        .server
        .harness_access()
        .apply(protocol::access::Role::Ops, options)
        .expect("the harness's nkey");
    let client = options.connect(h.server.url()).await.expect("connecting");
    let js = async_nats::jetstream::new(client);
    let events = js
        .get_stream(subjects::EVENTS_STREAM)
        .await
        .expect("the events stream");
    EventPublisher::start(
        js,
        events,
        connection,
        subject.into(),
        0,
        first,
        fixed_window(),
    )
}

/// The window the publisher reports to; these tests do not look at it.
fn fixed_window() -> std::sync::Arc<worker::chunk_window::ChunkWindow> {
    std::sync::Arc::new(worker::chunk_window::ChunkWindow::fixed(
        std::time::Duration::from_millis(20),
    ))
}
