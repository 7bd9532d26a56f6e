//! Resume, gap repair, slow clients and the replay window (guarantee 1):
//! every client sees each event of its session exactly once, in order.

#![allow(clippy::unwrap_used)]

#[path = "worker_support/mod.rs"]
mod support;

use std::time::Duration;

use futures::StreamExt;
use protocol::frames::{ControlFrame, SequencedEvent, ServerFrame};
use protocol::{ErrorCode, Event};
use rand::{Rng, SeedableRng};
use support::{Options, Received, TestApp};

fn paced(tokens_per_sec: &str, tokens: &str) -> Options {
    Options {
        worker_args: vec![
            "--demo-tokens-per-sec".into(),
            tokens_per_sec.into(),
            "--demo-answer-tokens".into(),
            tokens.into(),
            "--chunk-window-ms".into(),
            "0".into(),
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn reconnecting_a_hundred_times_mid_answer_loses_and_doubles_nothing() {
    let app = TestApp::start_with(paced("400", "400")).await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    let (id, _) = ws.chat("a long answer to reconnect through").await;
    drop(ws);

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut seen: Vec<SequencedEvent> = Vec::new();
    let mut last = 0u64;
    let mut reconnects = 0;
    'outer: loop {
        let mut ws = app.connect(&session, &token, Some(last)).await;
        ws.ready().await;
        reconnects += 1;
        // Read a random number of events, then drop the socket abruptly.
        let take = if reconnects >= 100 {
            usize::MAX
        } else {
            rng.random_range(0..8)
        };
        for _ in 0..take {
            let ServerFrame::Event(e) = ws.frame().await else {
                continue;
            };
            assert!(
                e.seq > last,
                "duplicate or out of order: {} after {last}",
                e.seq
            );
            last = e.seq;
            let done = e.event.is_terminal() && e.event.message_id() == Some(id);
            seen.push(e);
            if done {
                break 'outer;
            }
        }
    }
    assert!(
        reconnects >= 100,
        "the answer ended after {reconnects} reconnects; make it longer"
    );
    assert_eq!(
        seen,
        app.events(&session, &token, 0).await,
        "what the client saw is what the stream holds"
    );
}

#[tokio::test]
async fn the_resume_frame_replays_on_an_open_socket() {
    let app = TestApp::start().await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    let (id, _) = ws.chat("resume me").await;
    let events = ws.until_terminal(id).await;
    let from = events[1].seq;
    ws.send_json(serde_json::json!({"type": "resume", "after_seq": from}))
        .await;
    let mut replayed = Vec::new();
    while replayed.len() < events.len() - 2 {
        if let ServerFrame::Event(e) = ws.frame().await {
            replayed.push(e);
        }
    }
    assert_eq!(replayed, events[2..].to_vec());
}

#[tokio::test]
async fn a_dropped_live_message_is_filled_from_the_stream() {
    let app = TestApp::start_with(Options {
        gateway_args: vec!["--test-drop-live-every".into(), "3".into()],
        ..paced("0", "60")
    })
    .await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    let (id, _) = ws.chat("holes everywhere").await;
    let events = ws.until_terminal(id).await;
    support::assert_strictly_increasing(&events);
    assert_eq!(events, app.events(&session, &token, 0).await);
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let repairs: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chat_gateway_gap_repairs_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        repairs >= 10.0,
        "every third message was dropped, so many repairs: {repairs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_does_not_read_is_closed_and_others_are_not_slowed() {
    // About 8 MB of answer in 16 KiB chunks: more than the kernel buffers
    // of a socket nobody reads, so the gateway's write to it times out.
    let app = TestApp::start_with(Options {
        gateway_args: vec!["--write-timeout-ms".into(), "500".into()],
        worker_args: vec![
            "--demo-tokens-per-sec".into(),
            "0".into(),
            "--demo-answer-tokens".into(),
            "1200000".into(),
            "--chunk-max-bytes".into(),
            "16384".into(),
        ],
        ..Default::default()
    })
    .await;
    let (session, token) = app.new_session().await;
    let mut stuck = app.connect(&session, &token, None).await;
    stuck.ready().await;
    let mut reader = app.connect(&session, &token, None).await;
    reader.ready().await;
    let (id, _) = reader.chat("flood").await;
    let events = reader.until_terminal(id).await;
    assert_eq!(
        events,
        app.events(&session, &token, 0).await,
        "the reading socket got everything"
    );

    // The stuck socket was closed by the gateway: reading it now drains
    // what the kernel buffered, then the socket ends before the answer does.
    let mut got_done = false;
    let mut code = None;
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(message)) = stuck.ws.next().await {
            match message {
                tokio_tungstenite::tungstenite::Message::Text(text) => {
                    got_done |= text.contains("\"type\":\"done\"");
                }
                tokio_tungstenite::tungstenite::Message::Close(frame) => {
                    code = frame.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stuck socket was never closed");
    assert!(
        !got_done,
        "a socket that never read cannot have been sent everything"
    );
    assert!(code.is_none() || code == Some(1013), "closed with {code:?}");
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("chat_gateway_slow_client_closes_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn after_seq_beyond_the_replay_window_says_so_and_sends_history() {
    let nats_window = Options {
        gateway_args: vec![
            "--replay-window-secs".into(),
            "1".into(),
            "--dedup-window-secs".into(),
            "1".into(),
        ],
        worker_args: vec![
            "--demo-tokens-per-sec".into(),
            "0".into(),
            "--replay-window-secs".into(),
            "1".into(),
            "--dedup-window-secs".into(),
            "1".into(),
        ],
        ..Default::default()
    };
    let app = TestApp::start_with(nats_window).await;
    let (session, token) = app.new_session().await;
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    let (id, _) = ws.chat("soon forgotten").await;
    ws.until_terminal(id).await;
    // Wait until the stream has expired those events, then one more turn.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !app.events(&session, &token, 0).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (second, _) = ws.chat("still here").await;
    ws.until_terminal(second).await;

    let mut late = app.connect(&session, &token, Some(1)).await;
    late.ready().await;
    match late.frame().await {
        ServerFrame::Control(ControlFrame::Error { code, .. }) => {
            assert_eq!(code, ErrorCode::ReplayExpired)
        }
        other => panic!("expected replay_expired, got {other:?}"),
    }
    match late.frame().await {
        ServerFrame::Control(ControlFrame::History { turns, .. }) => {
            assert_eq!(
                turns.first().map(|t| t.user.as_str()),
                Some("soon forgotten")
            );
        }
        other => panic!("expected history, got {other:?}"),
    }
    // Then what the stream still holds (the second turn).
    let rest = late.until_terminal(second).await;
    assert!(matches!(rest[0].event, Event::UserMessage { .. }));
}

#[tokio::test]
async fn bad_after_seq_values_are_refused() {
    let app = TestApp::start().await;
    let (session, token) = app.new_session().await;
    for bad in ["-1", "abc", "99999999"] {
        let url = app.ws_url(&format!("?session={session}&token={token}&after_seq={bad}"));
        let mut ws = support::Client::connect(&url).await;
        match ws.recv().await {
            Received::Frame(ServerFrame::Control(ControlFrame::Error { code, .. })) => {
                assert_eq!(code, ErrorCode::BadRequest, "after_seq={bad}")
            }
            other => panic!("after_seq={bad}: {other:?}"),
        }
    }
    let mut ws = app.connect(&session, &token, None).await;
    ws.ready().await;
    ws.send_json(serde_json::json!({"type": "resume", "after_seq": 424242}))
        .await;
    assert!(matches!(
        ws.frame().await,
        ServerFrame::Control(ControlFrame::Error {
            code: ErrorCode::BadRequest,
            ..
        })
    ));
    // The socket lives on.
    ws.send_json(serde_json::json!({"type": "ping"})).await;
    assert!(matches!(
        ws.frame().await,
        ServerFrame::Control(ControlFrame::Pong)
    ));
}
