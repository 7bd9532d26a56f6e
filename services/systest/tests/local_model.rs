//! A real language model behind the whole system: llama-cpp-python's
//! OpenAI-compatible server with SmolLM2-135M on the CPU (the model of
//! `just up --model local`), one worker pointed at it with
//! `WORKER_BACKEND=openai`, a gateway behind Nginx, and a browser's
//! WebSocket in. The answer is a real model's tokens: not empty, ended by
//! `done`, with `usage` when the server sends it, and replayed the same.
//!
//! The server comes from `scripts/local-model.sh` (`just test` installs it
//! first; built once, then cached). A machine that cannot build it fails
//! this test with the script's message: it never passes without a model.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::frames::{ControlFrame, SequencedEvent, ServerFrame};
use protocol::{Event, MessageId};
use serde_json::json;
use stack::{LocalModel, Stack, StackOptions};
use support::{stored_events, Session};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long the whole answer may take: 40 tokens of a 135M model take about
/// a second on a free core; a loaded machine gets a wide margin.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

async fn next_frame(socket: &mut Socket) -> ServerFrame {
    loop {
        let message = tokio::time::timeout(ANSWER_TIMEOUT, socket.next())
            .await
            .expect("no frame within the answer timeout")
            .expect("the socket closed")
            .unwrap();
        if let Message::Text(text) = message {
            return ServerFrame::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }
}

/// The session's events up to `id`'s terminal event (inclusive).
async fn until_terminal(socket: &mut Socket, id: MessageId) -> Vec<SequencedEvent> {
    let mut events = Vec::new();
    loop {
        match next_frame(socket).await {
            ServerFrame::Event(event) => {
                let last = event.event.is_terminal() && event.event.message_id() == Some(id);
                events.push(event);
                if last {
                    return events;
                }
            }
            ServerFrame::Control(ControlFrame::Error { code, message, .. }) => {
                panic!("the gateway refused the chat: {code:?} {message}")
            }
            ServerFrame::Control(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_local_model_answers_through_the_whole_system_and_the_answer_replays() {
    let model = LocalModel::start().await.unwrap();
    let mut env = model.worker_env();
    env.push(("OPENAI_MAX_TOKENS".into(), "40".into()));
    let stack = Stack::start(StackOptions {
        gateways: 1,
        workers: 1,
        env,
        ..Default::default()
    })
    .await
    .unwrap();
    let ws_base = stack.nginx_url().replacen("http://", "ws://", 1);

    // A browser's first connection: a new session, its token in `ready`.
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{ws_base}/ws/chat"))
        .await
        .unwrap();
    let ServerFrame::Control(ControlFrame::Ready {
        session_id, token, ..
    }) = next_frame(&mut socket).await
    else {
        panic!("the first frame is not ready");
    };
    let token = token.expect("a new session's ready carries its token");

    let id = MessageId::new();
    let question = "What is the capital of France? Answer in one sentence.";
    let chat = json!({"type": "chat", "message_id": id, "content": question});
    socket
        .send(Message::Text(chat.to_string().into()))
        .await
        .unwrap();
    let live = until_terminal(&mut socket, id).await;

    let last = &live.last().unwrap().event;
    let Event::Done { usage, .. } = last else {
        panic!(
            "the answer ended with {last:?}, not done; the model server's log:\n{}",
            model.log_tail()
        );
    };
    let answer: String = live
        .iter()
        .filter_map(|e| match &e.event {
            Event::Chunk { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        !answer.trim().is_empty(),
        "an empty answer from the model: {live:?}"
    );
    eprintln!("the local model answered {answer:?} (usage: {usage:?})");
    assert!(
        model.log().contains("POST /v1/chat/completions"),
        "the worker never asked the model server (the demo model answered?); its log:\n{}",
        model.log_tail()
    );
    // llama-cpp-python's server sends no usage in a stream; when a server
    // does, it counts what was generated.
    if let Some(usage) = usage {
        assert!(usage.completion_tokens > 0, "{usage:?}");
        assert!(usage.prompt_tokens > 0, "{usage:?}");
    }

    // Replay: a reconnect from the start gets the same events…
    let url = format!("{ws_base}/ws/chat?session={session_id}&after_seq=0");
    let (mut again, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let auth = json!({"type": "auth", "token": token}).to_string();
    again.send(Message::Text(auth.into())).await.unwrap();
    let replayed = until_terminal(&mut again, id).await;
    assert_eq!(replayed, live, "the reconnect replays the answer exactly");

    // …and so does GET /api/events.
    let session = Session {
        id: session_id.to_string(),
        token,
    };
    let stored = stored_events(&reqwest::Client::new(), &stack.nginx_url(), &session).await;
    assert_eq!(stored, live, "GET /api/events returns the answer exactly");
}
