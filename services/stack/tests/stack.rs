//! The whole system as processes (`stack::Stack`): nats-server,
//! 3 gateways, 3 workers and Nginx come up and answer `/health`; a killed
//! gateway's traffic goes to the others; restarts keep their ports; SIGTERM
//! ends a gateway and a worker cleanly. Needs `cargo build --workspace`
//! first (`just test` does it).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use stack::{http_get, Stack, StackOptions};

#[tokio::test]
async fn three_gateways_and_three_workers_behind_nginx() {
    let mut stack = Stack::start(StackOptions {
        gateways: 3,
        workers: 3,
        env: vec![("DEMO_TOKENS_PER_SEC".into(), "0".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!((stack.gateway_count(), stack.worker_count()), (3, 3));

    let (status, body) = http_get(&format!("{}/health", stack.nginx_url()))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("gw-"), "health names no node: {body}");
    for i in 0..3 {
        let (status, body) = http_get(&format!("{}/health", stack.gateway_url(i)))
            .await
            .unwrap();
        assert_eq!(status, 200, "gateway {i}: {body}");
        assert!(body.contains(&stack.gateway_node(i)), "gateway {i}: {body}");
        let (status, body) = http_get(&format!("{}/health", stack.worker_metrics_url(i)))
            .await
            .unwrap();
        assert_eq!(status, 200, "worker {i}: {body}");
    }

    // A killed gateway: Nginx sends every request to a live one.
    let port = stack.gateway_url(0);
    stack.kill_gateway(0).unwrap();
    assert!(!stack.gateway_running(0));
    for _ in 0..12 {
        let (status, body) = http_get(&format!("{}/health", stack.nginx_url()))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            !body.contains("gw-0"),
            "answered by the killed gateway: {body}"
        );
    }
    stack.restart_gateway(0).await.unwrap();
    assert_eq!(stack.gateway_url(0), port, "a restart must keep the port");
    assert!(stack.gateway_running(0));

    // SIGTERM: both binaries exit 0 within their grace period.
    let status = tokio::time::timeout(Duration::from_secs(30), stack.terminate_gateway(2))
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "gateway exit: {status}");
    let status = tokio::time::timeout(Duration::from_secs(30), stack.terminate_worker(1))
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "worker exit: {status}");
    stack.restart_worker(1).await.unwrap();
    let (status, _) = http_get(&format!("{}/health", stack.worker_metrics_url(1)))
        .await
        .unwrap();
    assert_eq!(status, 200);
}
