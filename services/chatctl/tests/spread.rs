//! Issue 2, test 3: through Nginx, three gateways and three workers as
//! separate processes serve 20 sessions chatting at once; every answer is
//! complete and correct, and the work was spread over more than one worker.

#![allow(clippy::unwrap_used)]

mod support;

const TOKENS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sessions_get_correct_answers_from_several_workers() {
    let stack = support::start(
        3,
        3,
        true,
        &[
            ("DEMO_TOKENS_PER_SEC", "80"),
            ("DEMO_ANSWER_TOKENS", "40"),
            // A worker holds at most 4 jobs: 20 at once must spread.
            ("WORKER_CONCURRENCY", "4"),
        ],
    )
    .await;
    let base = stack.nginx_url();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut client = support::client(&base).await;
        tasks.push(tokio::spawn(async move {
            client
                .ask(&support::prompt(i, 0), support::deadline())
                .await
                .unwrap();
            client
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    support::assert_all_correct(&base, &mut clients, TOKENS).await;

    let mut done = Vec::new();
    for i in 0..3 {
        let text = support::worker_metrics(&stack, i).await;
        done.push(support::metric(
            &text,
            "chat_worker_jobs_total",
            "outcome=\"done\"",
        ));
    }
    assert_eq!(
        done.iter().sum::<f64>(),
        20.0,
        "jobs done per worker: {done:?}"
    );
    assert!(
        done.iter().filter(|d| **d > 0.0).count() > 1,
        "one worker did everything: {done:?}"
    );
}
