//! Issue 3, test 4: nats-server restarts mid-conversation. Gateways and
//! workers reconnect by themselves, clients reconnect with `after_seq`, and
//! no accepted message is lost: each ends with one terminal event and a
//! correct answer.

#![allow(clippy::unwrap_used)]

mod support;

const TOKENS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_survives_a_nats_restart() {
    let mut stack = support::start(
        2,
        2,
        true,
        &[("DEMO_TOKENS_PER_SEC", "60"), ("DEMO_ANSWER_TOKENS", "60")],
    )
    .await;
    let base = stack.nginx_url();
    let mut tasks = Vec::new();
    let mut watches = Vec::new();
    for i in 0..5 {
        let mut client = support::client(&base).await;
        watches.push(client.progress());
        tasks.push(tokio::spawn(async move {
            for turn in 0..3 {
                client
                    .ask(&support::prompt(i, turn), support::deadline())
                    .await
                    .unwrap();
            }
            client
        }));
    }
    for w in &mut watches {
        support::wait_for(w, "a first chunk", |p| p.chunks >= 1).await;
    }
    tokio::task::block_in_place(|| stack.restart_nats()).unwrap();

    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    support::assert_all_correct(&base, &mut clients, TOKENS).await;
    for c in &clients {
        assert_eq!(c.log.asked.len(), 3);
    }
}
