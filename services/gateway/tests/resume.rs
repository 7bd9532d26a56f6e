//! No gap, no duplicate, in order: reconnects with `after_seq` mid-answer,
//! the `resume` frame, gap repair after a lost live message, a client that
//! falls behind and catches up from the stream, and one that stops reading
//! and is let go without slowing anyone else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use protocol::frames::{SequencedEvent, ServerFrame};
use rand::Rng;
use serde_json::json;
use support::{assert_strictly_increasing, eventually, Received, Script, ScriptedWorker, TestApp};
use tokio_tungstenite::tungstenite::Message;

fn slow_script(chunks: usize, delay_ms: u64) -> Script {
    Script {
        chunks: (0..chunks).map(|i| format!("w{i} ")).collect(),
        delay: Duration::from_millis(delay_ms),
    }
}

#[tokio::test]
async fn reconnecting_with_after_seq_mid_answer_loses_and_repeats_nothing() {
    let app = TestApp::start().await;
    let _worker = ScriptedWorker::start(&app, slow_script(300, 8)).await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;
    let (id, _, early) = ws.chat("a long answer, please").await;
    let mut received: Vec<SequencedEvent> = early;
    let mut rng = rand::rng();
    let mut reconnects = 0;
    let done = |events: &[SequencedEvent]| {
        events
            .last()
            .is_some_and(|e| e.event.is_terminal() && e.event.message_id() == Some(id))
    };
    while !done(&received) {
        // Read a random number of events, then drop the connection.
        let n = rng.random_range(0..6);
        for _ in 0..n {
            if let ServerFrame::Event(e) = ws.frame().await {
                received.push(e);
                if done(&received) {
                    break;
                }
            }
        }
        if done(&received) {
            break;
        }
        drop(ws);
        reconnects += 1;
        let after = received.last().map(|e| e.seq).unwrap_or(0);
        ws = app.connect(session, &token, Some(after)).await;
        let (_, _, _, last_seq) = ws.ready().await;
        assert!(last_seq >= after);
    }
    assert!(reconnects >= 30, "only {reconnects} reconnects");
    assert_strictly_increasing(&received);
    let (stored, _) = app.events(session, &token, 0).await;
    assert_eq!(received, stored, "after {reconnects} reconnects");
    assert_eq!(stored.len(), 302);
}

#[tokio::test]
async fn the_resume_frame_replays_then_continues_live_without_duplicates() {
    let app = TestApp::start().await;
    let _worker = ScriptedWorker::start(&app, slow_script(60, 5)).await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;

    // After an answer: resume from the middle replays exactly what follows.
    let (id, _, early) = ws.chat("first").await;
    let first = ws.until_terminal(id, early).await;
    let n = first[10].seq;
    ws.send_json(json!({"type": "resume", "after_seq": n}))
        .await;
    let replayed = ws.until_terminal(id, Vec::new()).await;
    assert_eq!(replayed, first[11..].to_vec());

    // During an answer: resume from its start; the replay covers what was
    // sent, then live events follow with nothing repeated or missing.
    let (id2, _, early) = ws.chat("second").await;
    let mut before = early;
    while before.len() < 15 {
        if let ServerFrame::Event(e) = ws.frame().await {
            before.push(e);
        }
    }
    let start = before[0].seq - 1;
    ws.send_json(json!({"type": "resume", "after_seq": start}))
        .await;
    let mut after = ws.until_terminal(id2, Vec::new()).await;
    // Live events already in flight when the resume was sent come first;
    // the replay starts where the sequence drops back.
    let restart = after
        .windows(2)
        .position(|w| w[1].seq <= w[0].seq)
        .map_or(0, |i| i + 1);
    let tail = after.split_off(restart);
    assert_eq!(tail[0].seq, start + 1, "the replay starts after after_seq");
    assert_strictly_increasing(&tail);
    let (stored, _) = app.events(session, &token, start).await;
    assert_eq!(tail, stored);
}

#[tokio::test]
async fn a_lost_live_message_is_repaired_from_the_stream() {
    let app = TestApp::start_with(&["--test-drop-live-every", "3"]).await;
    let _worker = ScriptedWorker::start(&app, slow_script(40, 0)).await;
    let (session, token) = app.new_session().await;
    let before = app.metric("chat_gateway_gap_repairs_total").await;
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;
    let (id, _, early) = ws.chat("with holes").await;
    let events = ws.until_terminal(id, early).await;
    assert_strictly_increasing(&events);
    let (stored, _) = app.events(session, &token, 0).await;
    assert_eq!(events, stored);
    assert_eq!(events.len(), 42);
    let after = app.metric("chat_gateway_gap_repairs_total").await;
    assert!(after > before, "gap repairs {before} -> {after}");
}

#[tokio::test]
async fn a_client_that_falls_behind_catches_up_from_the_stream_without_a_close() {
    // A ring of 8 live events and a 16 MiB answer in 2,000 chunks published
    // at once: a client that pauses before reading, and then now and again,
    // falls far behind (more than the kernel's socket buffers hold).
    let app = TestApp::start_with(&["--outbound-queue", "8"]).await;
    let body = "y".repeat(8 * 1024);
    let script = Script {
        chunks: (0..2_000).map(|i| format!("{i}:{body}")).collect(),
        delay: Duration::ZERO,
    };
    let _worker = ScriptedWorker::start(&app, script).await;
    let (session, token) = app.new_session().await;
    let catch_ups = app.metric("chat_gateway_catch_ups_total").await;
    let mut ws = app.connect(session, &token, None).await;
    ws.ready().await;
    let (id, _, mut events) = ws.chat("flood me slowly").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    while !events
        .last()
        .is_some_and(|e| e.event.is_terminal() && e.event.message_id() == Some(id))
    {
        match ws.recv().await {
            Received::Frame(ServerFrame::Event(e)) => events.push(e),
            Received::Frame(_) => {}
            Received::Closed(code) => panic!("a slow reader was closed ({code:?})"),
        }
        if events.len() % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_strictly_increasing(&events);
    let (stored, _) = app.events(session, &token, 0).await;
    assert_eq!(events, stored, "every event, once, in order");
    assert_eq!(events.len(), 2_002);
    // (Metrics are per process and tests run side by side: this can only
    // show that catch-ups happened, the loop above that none closed us.)
    assert!(
        app.metric("chat_gateway_catch_ups_total").await > catch_ups,
        "the reader never fell a ring behind, so this test proves nothing"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_slows_no_one() {
    let app = TestApp::start_with(&["--outbound-queue", "256", "--write-timeout-ms", "2000"]).await;
    let big = "x".repeat(8 * 1024);
    let script = Script {
        chunks: (0..2_000).map(|i| format!("{i}:{big}")).collect(),
        delay: Duration::ZERO,
    };
    let _worker = ScriptedWorker::start(&app, script).await;
    let (session, token) = app.new_session().await;
    let before = app.metric("chat_gateway_slow_client_closes_total").await;
    let started = tokio::time::Instant::now();
    // The slow socket never reads (not even `ready`).
    let mut slow = app.connect(session, &token, None).await;
    let mut reader = app.connect(session, &token, None).await;
    reader.ready().await;
    let (id, _, early) = reader.chat("flood me").await;
    let events = reader.until_terminal(id, early).await;
    assert_eq!(events.len(), 2_002, "the reading socket got everything");
    assert_strictly_increasing(&events);
    eventually("the slow socket to be closed", || async {
        app.metric("chat_gateway_slow_client_closes_total").await > before
    })
    .await;
    // Now drain the slow socket: what was buffered, then the close.
    let mut close = None;
    while let Some(received) = slow.recv_within(support::WAIT).await {
        if let Received::Closed(code) = received {
            close = code;
            break;
        }
    }
    assert_eq!(close, Some(1013));
    assert!(started.elapsed() < Duration::from_secs(30));
    // The session and the gateway carry on.
    reader.ping().await;
    reader.send(Message::Ping(Vec::new().into())).await;
}
