//! What the system tests do as a client: create a session, read its
//! stored events over REST, wait until they show something.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test binary uses a part

use std::time::Duration;

use protocol::frames::{SequencedEvent, ServerFrame};
use protocol::Event;
use serde_json::{json, Value};

pub struct Session {
    pub id: String,
    pub token: String,
}

pub async fn new_session(http: &reqwest::Client, base: &str) -> Session {
    let body: Value = http
        .post(format!("{base}/api/sessions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Session {
        id: body["session_id"].as_str().unwrap().to_string(),
        token: body["token"].as_str().unwrap().to_string(),
    }
}

/// Every stored event of the session, as `GET /api/events?after_seq=0` gives them.
pub async fn stored_events(http: &reqwest::Client, base: &str, s: &Session) -> Vec<SequencedEvent> {
    let body: Value = http
        .get(format!("{base}/api/events?session={}&after_seq=0", s.id))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(
            |e| match serde_json::from_value::<ServerFrame>(e.clone()).unwrap() {
                ServerFrame::Event(event) => event,
                other => panic!("not an event: {other:?}"),
            },
        )
        .collect()
}

pub async fn events(http: &reqwest::Client, base: &str, s: &Session) -> Vec<Event> {
    let stored = stored_events(http, base, s).await;
    stored.into_iter().map(|e| e.event).collect()
}

pub async fn wait_for_events(
    http: &reqwest::Client,
    base: &str,
    s: &Session,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = events(http, base, s).await;
        if done(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events never arrived: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
