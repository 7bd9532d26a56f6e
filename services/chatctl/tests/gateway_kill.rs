//! Issue 3, test 2: SIGKILL one of three gateways behind Nginx mid-stream.
//! Its sessions reconnect through Nginx with `after_seq`, land on another
//! gateway and finish correctly, with no gap and no duplicate.

#![allow(clippy::unwrap_used)]

mod support;

const TOKENS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_killed_gateway_finish_on_the_others() {
    let mut stack = support::start(
        3,
        2,
        true,
        &[("DEMO_TOKENS_PER_SEC", "40"), ("DEMO_ANSWER_TOKENS", "60")],
    )
    .await;
    let base = stack.nginx_url();
    let mut tasks = Vec::new();
    let mut watches = Vec::new();
    for i in 0..8 {
        let mut client = support::client(&base).await;
        watches.push(client.progress());
        tasks.push(tokio::spawn(async move {
            client
                .ask(&support::prompt(i, 0), support::deadline())
                .await
                .unwrap();
            client
        }));
    }
    // Everyone streams; kill the gateway session 0 streams through.
    for w in &mut watches {
        support::wait_for(w, "a first chunk", |p| p.chunks >= 1).await;
    }
    let node = watches[0].borrow().node.clone().unwrap();
    let victim = support::gateway_index(&stack, &node);
    stack.kill_gateway(victim).unwrap();

    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    support::assert_all_correct(&base, &mut clients, TOKENS).await;
    let moved: Vec<_> = clients
        .iter()
        .filter(|c| c.log.attachments.first().map(|a| a.node.as_str()) == Some(node.as_str()))
        .collect();
    assert!(!moved.is_empty());
    for c in moved {
        assert!(
            c.log.reconnects >= 1,
            "session {} never reconnected",
            c.session()
        );
        let last = c.log.attachments.last().unwrap();
        assert_ne!(
            last.node,
            node,
            "session {} is still on the dead gateway",
            c.session()
        );
    }
}
