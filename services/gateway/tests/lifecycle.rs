//! How a gateway ends and how it reports itself: shutdown closes every
//! socket with 1012 and stops accepting; `/health` follows NATS.

mod support;

use protocol::{CloseCode, ErrorCode};
use serde_json::Value;
use support::{assert_rest_error, eventually, TestApp, Ws};

#[tokio::test]
async fn shutdown_closes_every_socket_with_1012() {
    let mut app = TestApp::start().await;
    let (session, token) = app.new_session().await;
    let mut a = app.connect(session, &token, None).await;
    let mut b = Ws::connect(&app.ws_url("")).await;
    a.ready().await;
    b.ready().await;
    app.shutdown_gateway().await;
    a.expect_close(CloseCode::ServiceRestart).await;
    b.expect_close(CloseCode::ServiceRestart).await;
    let refused = tokio_tungstenite::connect_async(app.ws_url("")).await;
    assert!(refused.is_err(), "a stopped gateway accepts no sockets");
}

#[tokio::test]
async fn health_follows_the_nats_connection() {
    let mut app = TestApp::start().await;
    let url = app.url("/health");
    let response = app.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["nats"], "connected");
    assert_eq!(body["node"], "gw-test");
    app.nats.kill();
    eventually("/health to report 503", || async {
        app.http.get(&url).send().await.unwrap().status() == 503
    })
    .await;
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("chat_gateway_connections_open"));
}

#[tokio::test]
async fn a_failing_jetstream_is_refused_as_503_internal() {
    let app = TestApp::start().await;
    // The sessions bucket gone under the gateway: every session write fails.
    app.js()
        .await
        .delete_key_value(protocol::subjects::SESSIONS_BUCKET)
        .await
        .unwrap();
    let refused = app
        .http
        .post(app.url("/api/sessions"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_rest_error(refused, 503, ErrorCode::Internal).await;
}
