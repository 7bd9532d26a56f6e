//! `chatctl layout apply|check` (issue 13): `check` exits 1 while the
//! server's layout differs from its flags or is missing, 0 once `apply`
//! made it match.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use clap::Parser;
use stack::nats::NatsServer;

/// `chatctl layout ACTION --nats-url URL --nats-nkey-file OPS ARGS…`: its
/// exit code.
async fn chatctl_layout(nats: &NatsServer, action: &str, args: &[&str]) -> i32 {
    let url = nats.url();
    let ops = nats.access(protocol::access::Role::Ops).to_args();
    let mut argv = vec!["chatctl", "layout", action, "--nats-url", &url];
    argv.extend(ops.iter().map(String::as_str));
    argv.extend(args);
    chatctl::run(chatctl::Cli::parse_from(argv)).await.unwrap()
}

#[tokio::test]
async fn check_fails_on_a_missing_or_different_layout_and_passes_after_apply() {
    let nats = NatsServer::start().unwrap();
    assert_eq!(
        chatctl_layout(&nats, "check", &[]).await,
        1,
        "nothing applied yet"
    );

    let short_ttl = ["--session-ttl-secs", "60"];
    assert_eq!(chatctl_layout(&nats, "apply", &short_ttl).await, 0);
    assert_eq!(chatctl_layout(&nats, "check", &short_ttl).await, 0);
    assert_eq!(
        chatctl_layout(&nats, "check", &[]).await,
        1,
        "the bucket's TTL differs from the default"
    );

    assert_eq!(chatctl_layout(&nats, "apply", &[]).await, 0);
    assert_eq!(chatctl_layout(&nats, "check", &[]).await, 0);
}

#[tokio::test]
async fn apply_needs_the_ops_credentials() {
    let nats = NatsServer::start().unwrap();
    let url = nats.url();
    // The worker's nkey: connected, but refused the layout's admin API.
    let worker = nats.access(protocol::access::Role::Worker).to_args();
    let mut argv = vec!["chatctl", "layout", "apply", "--nats-url", &url];
    argv.extend(worker.iter().map(String::as_str));
    argv.extend(["--patience-secs", "2"]);
    let result = chatctl::run(chatctl::Cli::parse_from(argv)).await;
    assert!(!matches!(result, Ok(0)), "a worker applied the layout");
    assert_eq!(
        chatctl_layout(&nats, "check", &[]).await,
        1,
        "nothing was made"
    );
}
