//! The events stream's bounds are cached for a second; a cached first
//! sequence must never call events that have left the stream replayable.

use async_nats::jetstream;
use gateway::replay::StreamBounds;
use protocol::access::Role;
use protocol::setup::{self, LayoutConfig};
use protocol::{subjects, SessionId};
use stack::nats::NatsServer;

#[tokio::test]
async fn cached_bounds_never_call_events_that_left_the_stream_replayable() {
    let nats = NatsServer::start().unwrap();
    // A replay window short enough that the stream counts as near its
    // limits, as a stream under steady load does.
    let config =
        LayoutConfig::from_env_overrides(&[("CHAT_REPLAY_WINDOW_SECS".into(), "20".into())])
            .unwrap();
    let ops = jetstream::new(nats.connect_as(Role::Ops).await.unwrap());
    let ops_layout = setup::ensure(&ops, &config).await.unwrap();
    let worker = jetstream::new(nats.connect_as(Role::Worker).await.unwrap());
    let gateway = jetstream::new(nats.connect_as(Role::Gateway).await.unwrap());
    let events = setup::verify(&gateway, &config).await.unwrap().events;
    let subject = subjects::events(SessionId::new());
    let store = || async {
        worker
            .publish(subject.clone(), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    };
    for _ in 0..4 {
        store().await;
    }
    let bounds = StreamBounds::default();
    let asked = bounds.for_after(&events, 0).await.unwrap();
    assert_eq!((asked.first, asked.last), (1, 4));
    // The stream's oldest events leave within the cache's second (four
    // written within one second expire within one); a purge does it now.
    ops_layout.events.purge().await.unwrap();
    let after_one = bounds.for_after(&events, 1).await.unwrap();
    assert!(
        after_one.first > 2,
        "event 2 is gone, yet the bounds say the stream starts at {}",
        after_one.first
    );
    // While an `after_seq`'s successor is stored, the cache answers (its
    // last is behind the stream's now, which a fresh answer's is not).
    let fifth = store().await;
    let answered = bounds.for_after(&events, fifth - 1).await.unwrap();
    assert_eq!(answered, after_one, "the successor is stored: cached");
    assert!(answered.last < fifth);

    // A client caught up with the cached end: its own event still stored
    // says nothing after it left, so the cache answers without asking the
    // leader (whose answer would now end at the deleted sixth).
    let caught_up = StreamBounds::default();
    let cached = caught_up.for_after(&events, fifth).await.unwrap();
    assert_eq!(cached.last, fifth);
    let sixth = store().await;
    ops_layout.events.delete_message(sixth).await.unwrap();
    let answered = caught_up.for_after(&events, fifth).await.unwrap();
    assert_eq!(
        answered, cached,
        "the client's own last event is stored: cached"
    );
}
