//! What a browser gets through real Nginx (the template `just up` renders):
//! the page's security headers, a refusal for a WebSocket opened by another
//! site's page, and an access log that never holds a query string.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use stack::{Stack, StackOptions};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

async fn stack() -> Stack {
    Stack::start(StackOptions {
        gateways: 1,
        workers: 1,
        nginx: true,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// The status of a `/ws/chat` handshake through Nginx with this `Origin`.
async fn handshake(base: &str, query: &str, origin: &str) -> u16 {
    let url = format!("{}/ws/chat{query}", base.replacen("http", "ws", 1));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn the_page_is_served_hardened_and_the_log_holds_no_query() {
    let stack = stack().await;
    let base = stack.nginx_url();
    let http = reqwest::Client::new();

    for path in ["/", "/assets/app.js"] {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        let headers = response.headers();
        let csp = headers
            .get("content-security-policy")
            .unwrap_or_else(|| panic!("{path}: no Content-Security-Policy"))
            .to_str()
            .unwrap();
        for directive in [
            "default-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {directive} not in {csp}");
        }
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
    let api = http
        .get(format!("{base}/api/history?session=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.headers()["x-content-type-options"], "nosniff");

    // The page's own origin opens a socket; another site's page cannot.
    assert_eq!(handshake(&base, "", &base).await, 101);
    assert_eq!(handshake(&base, "", "https://evil.example").await, 403);

    // A secret in a URL (an old client's `?token=`) is not logged.
    let secret = "url-secret-0123456789";
    let session = support::new_session(&http, &base).await;
    let query = format!("?session={}&token={secret}", session.id);
    handshake(&base, &query, &base).await;
    let history = format!("{base}/api/history?session={}&token={secret}", session.id);
    http.get(history).send().await.unwrap();

    let log = std::fs::read_to_string(stack.log_path("nginx-access")).unwrap();
    assert!(log.contains("/ws/chat"), "the socket is logged: {log}");
    assert!(log.contains("/api/history"), "the request is logged: {log}");
    assert!(!log.contains(secret), "a token reached the log: {log}");
    assert!(!log.contains('?'), "a query string reached the log: {log}");
}
