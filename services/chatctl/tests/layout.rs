//! `chatctl layout apply|check` (issue 13): `check` exits 1 while the
//! server's layout differs from its flags or is missing, 0 once `apply`
//! made it match.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use clap::Parser;
use stack::nats::NatsServer;

/// `chatctl layout ACTION --nats-url URL ARGS…`: its exit code.
async fn chatctl_layout(action: &str, url: &str, args: &[&str]) -> i32 {
    let mut argv = vec!["chatctl", "layout", action, "--nats-url", url];
    argv.extend(args);
    chatctl::run(chatctl::Cli::parse_from(argv)).await.unwrap()
}

#[tokio::test]
async fn check_fails_on_a_missing_or_different_layout_and_passes_after_apply() {
    let nats = NatsServer::start().unwrap();
    let url = nats.url();
    assert_eq!(
        chatctl_layout("check", &url, &[]).await,
        1,
        "nothing applied yet"
    );

    let short_ttl = ["--session-ttl-secs", "60"];
    assert_eq!(chatctl_layout("apply", &url, &short_ttl).await, 0);
    assert_eq!(chatctl_layout("check", &url, &short_ttl).await, 0);
    assert_eq!(
        chatctl_layout("check", &url, &[]).await,
        1,
        "the bucket's TTL differs from the default"
    );

    assert_eq!(chatctl_layout("apply", &url, &[]).await, 0);
    assert_eq!(chatctl_layout("check", &url, &[]).await, 0);
}
