//! An SSE answer's POST starts from the question it stored, with no read
//! of the stream. Its own binary: it asserts that a process-wide counter
//! (`chat_gateway_replays_total`) does not move, which a test running
//! beside it in the same process could move.

mod support;

use std::time::Duration;

use serde_json::json;
use support::sse::{chat_body, read_chunks, text_of};
use support::{answer, Script, TestApp};

#[tokio::test]
async fn a_posted_answer_starts_without_a_read_and_lost_live_events_are_repaired() {
    // The POST attaches to the live feed before it stores the question, so
    // its stream starts from the question in hand, with no replay; every
    // third live message is dropped on its way to the gateway, and each
    // hole is read from the stream (the next event's `Nats-Last-Sequence`
    // reveals it; a lost last event, the tail check).
    let app = TestApp::builder()
        .gateway_args(&["--test-drop-live-every", "3"])
        .scripted_worker(Script::numbered(40, Duration::from_millis(5)))
        .start()
        .await;
    let (session, token) = app.new_session().await;
    let replays = app.metric("chat_gateway_replays_total").await;
    let repairs = app.metric("chat_gateway_gap_repairs_total").await;
    let posted = app
        .post("/api/ui/chat", &token, chat_body(session, "with holes"))
        .await;
    assert_eq!(posted.status(), 200);
    let message_id = posted.headers()["x-resumable-stream-id"]
        .to_str()
        .unwrap()
        .to_string();
    let chunks = read_chunks(posted, None).await;
    assert_eq!(chunks[0], json!({"type": "start", "messageId": message_id}));
    let stored = app.all_events(session, &token).await;
    let expected: String = (0..40).map(|i| format!("w{i} ")).collect();
    assert_eq!(answer(&stored, message_id.parse().unwrap()), expected);
    assert_eq!(text_of(&chunks), expected, "every chunk once, in order");
    assert_eq!(chunks.last().unwrap()["type"], "finish");
    assert_eq!(
        app.metric("chat_gateway_replays_total").await,
        replays,
        "the POST's stream read no replay"
    );
    assert!(
        app.metric("chat_gateway_gap_repairs_total").await > repairs,
        "no live event was lost, so this test proves nothing"
    );
}
