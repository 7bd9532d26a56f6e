//! Concurrent compare-and-set updates of a session record lose nothing.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use async_nats::jetstream;
use protocol::records::{ActiveMessage, SessionRecord};
use protocol::sessions::{self, SessionStoreError};
use protocol::setup::{ensure, Layout, LayoutConfig};
use protocol::{subjects, MessageId, SessionId, SessionToken};
use stack::nats::NatsServer;

/// A server with the layout, and one session created in it.
async fn one_session() -> (NatsServer, Layout, SessionId, SessionRecord) {
    let server = NatsServer::start().unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let layout = ensure(&js, &LayoutConfig::default()).await.unwrap();
    let session = SessionId::new();
    let record = SessionRecord::new(SessionToken::generate().hash(), "gw".into(), 1);
    sessions::create(&layout.sessions, session, &record)
        .await
        .unwrap();
    (server, layout, session, record)
}

fn active(message_id: MessageId) -> ActiveMessage {
    ActiveMessage {
        message_id,
        accepted_at_ms: 1,
        ending: false,
        extra: Default::default(),
    }
}

#[tokio::test]
async fn concurrent_updates_all_land_and_limits_abort() {
    let (_server, layout, session, record) = one_session().await;
    assert!(sessions::create(&layout.sessions, session, &record)
        .await
        .is_err());

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = layout.sessions.clone();
        tasks.push(tokio::spawn(async move {
            sessions::update(&store, session, |r| {
                r.active.push(active(MessageId::new()));
                Ok::<_, ()>(true)
            })
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap().unwrap();
    }
    let stored = sessions::load(&layout.sessions, session)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.record.active.len(), 8);

    let refused = sessions::update(&layout.sessions, session, |r| {
        if r.active.len() >= 8 {
            Err("full")
        } else {
            Ok(true)
        }
    })
    .await
    .unwrap();
    assert_eq!(refused.unwrap_err(), "full");
    assert!(matches!(
        sessions::update(&layout.sessions, SessionId::new(), |_| Ok::<_, ()>(true)).await,
        Err(SessionStoreError::NotFound)
    ));
    assert!(sessions::load(&layout.sessions, SessionId::new())
        .await
        .unwrap()
        .is_none());
}

/// A record the caller read before another writer changed it: the update
/// from it is refused by the compare-and-set, reads the record again and
/// applies the change to the fresh copy, so the other writer's change
/// stays. From a record still current, the change lands on the first try.
#[tokio::test]
async fn an_update_from_a_record_read_before_another_write_reads_it_again() {
    let (_server, layout, session, _) = one_session().await;

    let read_before = sessions::load(&layout.sessions, session)
        .await
        .unwrap()
        .unwrap();
    let (other, ours) = (MessageId::new(), MessageId::new());
    sessions::update(&layout.sessions, session, |r| {
        r.active.push(active(other));
        Ok::<_, ()>(true)
    })
    .await
    .unwrap()
    .unwrap();
    let mut runs = 0;
    let updated = sessions::update_from(&layout.sessions, session, Some(read_before), |r| {
        runs += 1;
        r.active.push(active(ours));
        Ok::<_, ()>(true)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(runs, 2, "the stale copy first, then the fresh one");
    let ids = |r: &SessionRecord| r.active.iter().map(|m| m.message_id).collect::<Vec<_>>();
    assert_eq!(ids(&updated), vec![other, ours]);
    let stored = sessions::load(&layout.sessions, session)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&stored.record), vec![other, ours]);

    let mut runs = 0;
    let third = MessageId::new();
    sessions::update_from(&layout.sessions, session, Some(stored), |r| {
        runs += 1;
        r.active.push(active(third));
        Ok::<_, ()>(true)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(runs, 1, "a current copy needs no second read");
    let stored = sessions::load(&layout.sessions, session)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&stored.record), vec![other, ours, third]);
}

#[tokio::test]
async fn a_miss_is_asked_of_the_streams_leader_before_it_is_believed() {
    // On a cluster a direct get may come from a replica that has not yet
    // applied a session's creation; a miss is read again through the
    // stream's leader (`$JS.API.STREAM.MSG.GET`), a hit is not.
    let server = NatsServer::start().unwrap();
    let client = server.connect().await.unwrap();
    let js = jetstream::new(client.clone());
    let layout = ensure(&js, &LayoutConfig::default()).await.unwrap();
    let stream = layout.sessions.stream_name.clone();
    let mut leader_reads = client
        .subscribe(subjects::stream_message_get(&stream))
        .await
        .unwrap();
    client.flush().await.unwrap();

    let unknown = SessionId::new();
    assert!(sessions::load(&layout.sessions, unknown)
        .await
        .unwrap()
        .is_none());
    assert!(
        asked(&client, &mut leader_reads).await,
        "the miss was believed without asking the leader"
    );

    let session = SessionId::new();
    let record = SessionRecord::new(SessionToken::generate().hash(), "gw".into(), 1);
    sessions::create(&layout.sessions, session, &record)
        .await
        .unwrap();
    let found = sessions::load(&layout.sessions, session).await.unwrap();
    assert_eq!(found.unwrap().record.token_hash, record.token_hash);
    assert!(
        !asked(&client, &mut leader_reads).await,
        "a hit asked the leader too"
    );

    // A removed session stays removed, whoever answers.
    sessions::remove(&layout.sessions, session).await.unwrap();
    assert!(sessions::load(&layout.sessions, session)
        .await
        .unwrap()
        .is_none());
}

/// Whether a request came on `reads`. The loads publish on `client`, and
/// the server delivers what a connection published before it answers that
/// connection's later ping: after a flush, a request made is in hand.
async fn asked(client: &async_nats::Client, reads: &mut async_nats::Subscriber) -> bool {
    use futures::{FutureExt, StreamExt};
    client.flush().await.unwrap();
    let mut seen = false;
    while let Some(Some(_)) = reads.next().now_or_never() {
        seen = true;
    }
    seen
}
