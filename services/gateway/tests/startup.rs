//! A gateway started before NATS (or before a cluster has formed) waits for
//! it and comes up once it answers, instead of exiting (issue 14: `just up`
//! against a cluster that was still settling failed).

mod support;

use std::time::Duration;

use stack::nats::NatsServer;
use support::WAIT;

#[tokio::test]
async fn a_gateway_started_before_nats_comes_up_once_nats_does() {
    let mut nats = NatsServer::start().unwrap();
    // Operations applied the layout; the restarted server keeps its store.
    let ops = nats.connect_as(protocol::access::Role::Ops).await.unwrap();
    let js = async_nats::jetstream::new(ops);
    protocol::setup::ensure(
        &js,
        &protocol::setup::LayoutConfig::from_env_overrides(&[]).unwrap(),
    )
    .await
    .unwrap();
    drop(js);
    nats.kill(); // its port is known; nothing listens on it now
    let config = support::gateway_config(&nats, "gw-early", &[]);
    let mut starting = tokio::spawn(gateway::spawn(config));
    // Without NATS the connect is refused within milliseconds: a gateway
    // that does not wait has returned (an error) well within this.
    let early = tokio::time::timeout(Duration::from_millis(500), &mut starting).await;
    assert!(early.is_err(), "the gateway returned before NATS was up");
    nats.restart().unwrap();
    let gateway = tokio::time::timeout(WAIT * 4, starting)
        .await
        .expect("the gateway came up within its setup patience")
        .unwrap()
        .expect("the gateway started once NATS answered");
    let health = reqwest::get(format!("http://{}/health", gateway.addr()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    gateway.shutdown().await.unwrap();
}
