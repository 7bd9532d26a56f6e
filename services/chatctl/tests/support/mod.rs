//! Shared by the end-to-end tests: a stack of real processes, clients that
//! chat through it, and the checks of `chatctl::verify` on what they saw.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses a part

use std::time::Duration;

use chatctl::client::{Api, ChatClient, ClientOptions, Progress};
use chatctl::verify::{self, ExpectedAnswer, Violation};
use protocol::frames::SequencedEvent;
use stack::{Stack, StackOptions};
use tokio::sync::watch;
use tokio::time::Instant;

/// Starts gateways and workers (and Nginx) with the demo backend tuned by
/// `env` on top of a quick default pace.
pub(crate) async fn start(
    gateways: usize,
    workers: usize,
    nginx: bool,
    env: &[(&str, &str)],
) -> Stack {
    let mut all: Vec<(String, String)> = vec![
        ("RUST_LOG".into(), "warn".into()),
        ("DEMO_FIRST_TOKEN_MS".into(), "50".into()),
    ];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Stack::start(StackOptions {
        gateways,
        workers,
        env: all,
        nginx,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A new session's client through `base`.
pub(crate) async fn client(base: &str) -> ChatClient {
    let api = Api::new(base);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (session, token) = api.create_session_until(deadline).await.unwrap();
    ChatClient::new(base, session, token, ClientOptions::default())
}

/// Every violation of one client's session: its stream read through `base`
/// against what the client saw, and every answer it got against the demo
/// backend's text with `tokens` tokens. Returns the stream too.
pub(crate) async fn violations(
    base: &str,
    client: &mut ChatClient,
    tokens: usize,
) -> (Vec<Violation>, Vec<SequencedEvent>) {
    let api = Api::new(base);
    let deadline = Instant::now() + Duration::from_secs(20);
    let truth = api
        .events_until(client.session(), client.token(), deadline)
        .await
        .unwrap();
    if let Some(last) = truth.last() {
        client
            .catch_up(last.seq, Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
    }
    let mut found = verify::check_stream(client.session(), &truth, &client.log.events());
    let expected: Vec<ExpectedAnswer> = client
        .log
        .asked
        .iter()
        .map(|a| ExpectedAnswer {
            message_id: a.message_id,
            text: worker::backends::demo::answer(&a.prompt, tokens),
        })
        .collect();
    found.extend(verify::check_answers(client.session(), &truth, &expected));
    (found, truth)
}

/// Asserts no client broke a guarantee.
pub(crate) async fn assert_all_correct(base: &str, clients: &mut [ChatClient], tokens: usize) {
    let mut all = Vec::new();
    for c in clients.iter_mut() {
        assert!(
            !c.log.asked.is_empty(),
            "session {} asked nothing",
            c.session()
        );
        let (found, _) = violations(base, c, tokens).await;
        all.extend(found);
    }
    let listed: Vec<String> = all.iter().take(10).map(ToString::to_string).collect();
    assert!(
        all.is_empty(),
        "{} violation(s):\n{}",
        all.len(),
        listed.join("\n")
    );
}

/// Waits until `ok` holds for the progress of a client, or panics.
pub(crate) async fn wait_for(
    progress: &mut watch::Receiver<Progress>,
    what: &str,
    ok: impl Fn(&Progress) -> bool,
) -> Progress {
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        progress.wait_for(|p| ok(p)).await.map(|p| p.clone())
    })
    .await;
    match result {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => panic!("the client ended before {what}"),
        Err(_) => panic!("no {what} within 30 s; progress {:?}", *progress.borrow()),
    }
}

/// The value of a Prometheus sample whose line starts with `name{` and
/// contains `label` (e.g. `outcome="done"`), summed over matching lines.
pub(crate) fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| label.is_empty() || l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Worker `i`'s `/metrics` text.
pub(crate) async fn worker_metrics(stack: &Stack, i: usize) -> String {
    let (status, body) = stack::http_get(&format!("{}/metrics", stack.worker_metrics_url(i)))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Gateway index of a `ready.node` name.
pub(crate) fn gateway_index(stack: &Stack, node: &str) -> usize {
    (0..stack.gateway_count())
        .find(|i| stack.gateway_node(*i) == node)
        .unwrap_or_else(|| panic!("no gateway called {node}"))
}

/// A prompt that differs per session and turn.
pub(crate) fn prompt(session: usize, turn: usize) -> String {
    format!("Session {session} turn {turn}: how does a chat backend survive a restart?")
}

/// Far enough for any single test.
pub(crate) fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(50)
}
