//! Services only verify the layout (issue 13): a `gateway` or `worker`
//! binary whose `CHAT_SESSION_TTL_SECS` differs from the bucket operations
//! applied exits non-zero, naming the setting, and leaves the bucket as it
//! was. Needs `cargo build -p gateway -p worker` first (`just test` does it).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream;
use stack::nats::NatsServer;
use stack::project::bin_dir;

/// Longer than a drifted service takes to exit; only a hang reaches it.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn services_refuse_a_layout_whose_session_ttl_differs() {
    let nats = NatsServer::start().unwrap();
    let operations_env = vec![("CHAT_SESSION_TTL_SECS".to_string(), "60".to_string())];
    let ops = nats.access(protocol::access::Role::Ops);
    stack::layout::apply_for_services(&nats.url(), &ops, &operations_env)
        .await
        .unwrap();

    for (binary, listen_flag, role) in [
        ("gateway", "--listen", protocol::access::Role::Gateway),
        ("worker", "--metrics-listen", protocol::access::Role::Worker),
    ] {
        let output = tokio::time::timeout(
            EXIT_TIMEOUT,
            tokio::process::Command::new(bin_dir().unwrap().join(binary))
                .args(["--nats-url", &nats.url(), "--node", "drifted"])
                .args([listen_flag, "127.0.0.1:0"])
                .args(nats.access(role).to_args())
                .env_remove("CHAT_SESSION_TTL_SECS")
                .env("NO_COLOR", "1")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{binary} started on a drifted layout (it did not exit)"))
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{binary} exited 0: {text}");
        assert!(
            text.contains("ttl is 60s on the server, 604800s here (CHAT_SESSION_TTL_SECS)"),
            "{binary} did not name the setting: {text}"
        );
        assert!(text.contains("chatctl layout apply"), "{text}");
    }

    // Neither rewrote the bucket for everyone else.
    let js = jetstream::new(nats.connect().await.unwrap());
    let bucket = js
        .get_stream(format!("KV_{}", protocol::subjects::SESSIONS_BUCKET))
        .await
        .unwrap();
    assert_eq!(bucket.cached_info().config.max_age.as_secs(), 60);
}
