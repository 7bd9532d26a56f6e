//! NATS over TLS (issue 13, `NATS_TLS=1 just up`): a stack whose
//! nats-server requires TLS serves a whole chat; every service's connection
//! is encrypted (the server's `/connz` says which TLS version each uses);
//! a client that does not speak TLS, or does not trust the deployment's CA,
//! is refused.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use futures::{SinkExt, StreamExt};
use protocol::access::{NatsAccess, Role};
use protocol::frames::{ControlFrame, ServerFrame};
use protocol::Event;
use serde_json::{json, Value};
use stack::{Stack, StackOptions};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_chat_runs_over_tls_and_a_client_without_it_is_refused() {
    let stack = Stack::start(StackOptions {
        gateways: 1,
        workers: 1,
        nginx: false,
        tls: true,
        env: vec![("DEMO_TOKENS_PER_SEC".into(), "0".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let base = stack.gateway_url(0);
    let http = reqwest::Client::new();
    let session = support::new_session(&http, &base).await;
    let url = format!(
        "{}/ws/chat?session={}",
        base.replacen("http", "ws", 1),
        session.id
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let auth = json!({"type": "auth", "token": session.token}).to_string();
    ws.send(Message::Text(auth.into())).await.unwrap();
    let chat = json!({"type": "chat", "content": "over tls"}).to_string();
    let mut ready = false;
    let mut chunks = 0;
    loop {
        let text = match ws.next().await.unwrap().unwrap() {
            Message::Text(text) => text,
            _ => continue,
        };
        match ServerFrame::parse(&text).unwrap() {
            ServerFrame::Control(ControlFrame::Ready { .. }) if !ready => {
                ready = true;
                ws.send(Message::Text(chat.clone().into())).await.unwrap();
            }
            ServerFrame::Event(e) => match e.event {
                Event::Chunk { .. } => chunks += 1,
                Event::Done { .. } => break,
                Event::Error { .. } => panic!("the answer failed: {text}"),
                _ => {}
            },
            _ => {}
        }
    }
    assert!(chunks > 0, "an answer came in chunks");

    // Every connection of the stack's services is TLS.
    let connz = stack::http_get(&format!("{}/connz", stack.monitor_url()))
        .await
        .unwrap()
        .1;
    let connz: Value = serde_json::from_str(&connz).unwrap();
    let connections = connz["connections"].as_array().unwrap();
    let services: Vec<&Value> = connections
        .iter()
        .filter(|c| {
            let name = c["name"].as_str().unwrap_or_default();
            name == stack.gateway_node(0) || name == stack.worker_node(0)
        })
        .collect();
    assert_eq!(services.len(), 2, "{connz}");
    for c in services {
        let version = c["tls_version"].as_str().unwrap_or_default();
        assert!(version.starts_with("1."), "not TLS: {c}");
    }

    // The gateway's nkey without the deployment's CA (async-nats may still
    // try TLS, with the system's roots): refused.
    let security = stack.nats_security();
    let plain = NatsAccess {
        nats_ca_file: None,
        ..security.access(Role::Gateway)
    };
    assert!(
        !connects(&plain, &stack.nats_url()).await,
        "a client without the CA got in"
    );

    // TLS, but trusting another CA: the server is not verified, no connection.
    let elsewhere = tempfile::tempdir().unwrap();
    let other_ca = credentials::tls::ensure(elsewhere.path(), &[]).unwrap();
    let untrusted = NatsAccess {
        nats_ca_file: Some(other_ca.ca_cert),
        ..security.access(Role::Gateway)
    };
    assert!(
        !connects(&untrusted, &stack.nats_url()).await,
        "a server signed by another CA was trusted"
    );
    // The same nkey with the deployment's CA does connect: the refusals
    // above are the CA's doing.
    assert!(connects(&security.access(Role::Gateway), &stack.nats_url()).await);
}

/// Whether a gateway-role client with `access` gets a connection.
async fn connects(access: &NatsAccess, url: &str) -> bool {
    access
        .apply(Role::Gateway, async_nats::ConnectOptions::new())
        .unwrap()
        .connection_timeout(std::time::Duration::from_secs(2))
        .connect(url)
        .await
        .is_ok()
}
