//! No log holds a session token, at any level: a whole run (Nginx, two
//! gateways, a worker, `RUST_LOG=debug`) creates sessions over REST and
//! over a socket, chats with the token in the `auth` frame and in
//! `Authorization` headers, is refused a token in a URL, and revokes a
//! session; then every log file of the run is searched for every token
//! and every NATS nkey seed.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use futures::{SinkExt, StreamExt};
use protocol::frames::{ControlFrame, ServerFrame};
use protocol::Event;
use serde_json::json;
use stack::{Stack, StackOptions};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_frame(ws: &mut Socket) -> Option<ServerFrame> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => return Some(ServerFrame::parse(&text).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

#[tokio::test]
async fn no_log_of_a_whole_run_holds_a_token() {
    let stack = Stack::start(StackOptions {
        gateways: 2,
        workers: 1,
        env: vec![
            ("RUST_LOG".into(), "debug".into()),
            ("DEMO_TOKENS_PER_SEC".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let base = stack.nginx_url();
    let ws_base = base.replacen("http", "ws", 1);
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();

    // A session from REST, used over a socket with the auth frame.
    let rest = support::new_session(&http, &base).await;
    tokens.push(rest.token.clone());
    let url = format!("{ws_base}/ws/chat?session={}", rest.id);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let auth = json!({"type": "auth", "token": rest.token}).to_string();
    ws.send(Message::Text(auth.into())).await.unwrap();
    assert!(matches!(
        next_frame(&mut ws).await,
        Some(ServerFrame::Control(ControlFrame::Ready { .. }))
    ));
    let chat = json!({"type": "chat", "content": "hello there"}).to_string();
    ws.send(Message::Text(chat.into())).await.unwrap();
    loop {
        match next_frame(&mut ws).await.unwrap() {
            ServerFrame::Event(e) if matches!(e.event, Event::Done { .. }) => break,
            _ => continue,
        }
    }

    // A session from a socket without one: its token comes in `ready`.
    let (mut created, _) = tokio_tungstenite::connect_async(format!("{ws_base}/ws/chat"))
        .await
        .unwrap();
    let Some(ServerFrame::Control(ControlFrame::Ready {
        session_id,
        token: Some(token),
        ..
    })) = next_frame(&mut created).await
    else {
        panic!("no ready with a token");
    };
    tokens.push(token.clone());

    // REST with the token in the header; an old client's token in a URL
    // (refused); a revocation.
    let history = format!("{base}/api/history?session={}", rest.id);
    assert_eq!(
        http.get(&history)
            .bearer_auth(&rest.token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let in_url = format!("{ws_base}/ws/chat?session={session_id}&token={token}");
    let (mut refused, _) = tokio_tungstenite::connect_async(in_url).await.unwrap();
    while next_frame(&mut refused).await.is_some() {}
    let revoke = format!("{base}/api/sessions/{session_id}");
    let response = http
        .delete(&revoke)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert!(
        next_frame(&mut created).await.is_none(),
        "the revoked socket closes"
    );
    drop(ws);

    // The NATS credentials are secrets too: every role's nkey seed.
    let security = stack.nats_security();
    for role in protocol::access::Role::ALL {
        let seed = std::fs::read_to_string(security.credentials.seed_file(role)).unwrap();
        assert!(seed.starts_with("SU"), "{role}'s seed file");
        tokens.push(seed.trim().to_string());
    }

    let logs = std::fs::read_dir(stack.log_path("x").parent().unwrap()).unwrap();
    let mut read = 0;
    let mut debug_lines = 0;
    for file in logs.flatten() {
        let text = std::fs::read_to_string(file.path()).unwrap_or_default();
        debug_lines += text.matches("DEBUG").count();
        for token in &tokens {
            assert!(
                !text.contains(token.as_str()),
                "{} holds a token",
                file.path().display()
            );
        }
        read += 1;
    }
    assert!(read >= 4, "only {read} logs were read");
    assert!(debug_lines > 0, "the run did not log at debug level");
}
