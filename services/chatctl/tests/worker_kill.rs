//! Issue 3, test 3: a worker SIGKILLed mid-generation. The job comes back
//! to another worker, which announces `restart` (attempt 2) and streams the
//! whole answer; and a job whose every delivery dies ends with
//! `retries_exhausted` and a dead letter in `CHAT_DEAD`.

#![allow(clippy::unwrap_used)]

mod support;

use protocol::records::DeadLetter;
use protocol::{subjects, ErrorCode, Event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_restarts_on_another() {
    let mut stack = support::start(
        1,
        2,
        false,
        &[
            ("CHAT_ACK_WAIT_MS", "1500"),
            ("DEMO_TOKENS_PER_SEC", "30"),
            ("DEMO_ANSWER_TOKENS", "60"),
        ],
    )
    .await;
    let base = stack.nginx_url();
    let mut client = support::client(&base).await;
    let mut progress = client.progress();
    let task = tokio::spawn(async move {
        client
            .ask(&support::prompt(0, 0), support::deadline())
            .await
            .unwrap();
        client
    });
    support::wait_for(&mut progress, "a first chunk", |p| p.chunks >= 1).await;
    let mut holder = None;
    for i in 0..2 {
        let text = support::worker_metrics(&stack, i).await;
        if support::metric(&text, "chat_worker_jobs_in_flight", "") > 0.0 {
            holder = Some(i);
        }
    }
    let holder = holder.expect("no worker reports the job in flight");
    stack.kill_worker(holder).unwrap();

    let mut client = task.await.unwrap();
    let (violations, truth) = support::violations(&base, &mut client, 60).await;
    assert!(violations.is_empty(), "{violations:?}");
    let kinds: Vec<String> = truth
        .iter()
        .filter_map(|e| match &e.event {
            Event::Restart { attempt, .. } => Some(format!("restart{attempt}")),
            Event::Done { attempt, .. } => Some(format!("done{attempt}")),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, vec!["restart2", "done2"]);
    let other = 1 - holder;
    let text = support::worker_metrics(&stack, other).await;
    assert_eq!(
        support::metric(&text, "chat_worker_jobs_total", "outcome=\"done\""),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_every_worker_is_dead_lettered() {
    let mut stack = support::start(
        1,
        1,
        false,
        &[
            ("CHAT_MAX_DELIVER", "2"),
            ("CHAT_ACK_WAIT_MS", "2500"),
            ("DEMO_TOKENS_PER_SEC", "20"),
            ("DEMO_ANSWER_TOKENS", "80"),
        ],
    )
    .await;
    let base = stack.nginx_url();
    let mut client = support::client(&base).await;
    let session = client.session();
    let mut progress = client.progress();
    let task = tokio::spawn(async move {
        let id = client
            .ask(&support::prompt(0, 0), support::deadline())
            .await
            .unwrap();
        (client, id)
    });
    // Kill the only worker each time it starts the job.
    for attempt in 1..=2 {
        support::wait_for(&mut progress, "a chunk of this attempt", |p| {
            p.attempt == attempt && p.chunks >= 1
        })
        .await;
        stack.kill_worker(0).unwrap();
        stack.restart_worker(0).await.unwrap();
    }
    let (mut client, message_id) = task.await.unwrap();
    let (_, truth) = support::violations(&base, &mut client, 80).await;
    let last = truth.last().unwrap();
    match &last.event {
        Event::Error {
            message_id: id,
            code,
            ..
        } => {
            assert_eq!(*id, Some(message_id));
            assert_eq!(*code, ErrorCode::RetriesExhausted);
        }
        other => panic!("the stream ends with {other:?}"),
    }
    let terminals = truth.iter().filter(|e| e.event.is_terminal()).count();
    assert_eq!(terminals, 1);

    let nats = stack
        .connect_nats(protocol::access::Role::Ops)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(nats);
    let dead = js.get_stream(subjects::DEAD_STREAM).await.unwrap();
    let letter = dead
        .get_last_raw_message_by_subject(&subjects::dead(session))
        .await
        .unwrap();
    let letter: DeadLetter = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(letter.request.message_id, message_id);
    assert!(letter.deliveries >= 2, "{letter:?}");
}
