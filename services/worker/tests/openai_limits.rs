//! The `openai` backend's timeouts and size bounds against the scripted
//! server: an answer that keeps streaming is never cut by time, a stall
//! is; reasoning counts as the first token; an event over its bound is the
//! server's fault; an answer over its bound ends with `length`.
#![allow(clippy::unwrap_used)]

mod openai_support;

use std::time::{Duration, Instant};

use openai_support::{args, collect, collect_all, sse, Script, ScriptedServer, Step};
use protocol::FinishReason;
use worker::backends::openai::{OpenAiArgs, OpenAiBackend};
use worker::backends::{BackendError, Generation, ModelBackend, ModelOutput};

fn ask() -> Generation {
    Generation {
        prompt: "q".into(),
        history: Vec::new(),
        model: None,
    }
}

fn backend(server: &ScriptedServer, tune: impl FnOnce(&mut OpenAiArgs)) -> OpenAiBackend {
    let mut args = args(&server.base_url());
    tune(&mut args);
    OpenAiBackend::new(args).unwrap()
}

fn unavailable(last: Result<ModelOutput, BackendError>) -> String {
    match last {
        Err(BackendError::Unavailable { message, .. }) => message,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

fn rejected(last: Result<ModelOutput, BackendError>) -> String {
    match last {
        Err(BackendError::Rejected(message)) => message,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

fn one_second_timeouts(args: &mut OpenAiArgs) {
    args.first_token_timeout_secs = 1;
    args.idle_timeout_secs = 1;
}

#[tokio::test]
async fn an_answer_that_keeps_streaming_is_never_cut_by_the_idle_timeout() {
    let tokens: Vec<String> = (0..30).map(|i| format!("t{i} ")).collect();
    let server = ScriptedServer::start(vec![Script::Stream {
        tokens: tokens.clone(),
        finish_reason: Some("stop".into()),
        usage: None,
        done: true,
        pace: Duration::from_millis(100),
    }])
    .await;
    let backend = backend(&server, one_second_timeouts);
    let started = Instant::now();
    let (got, last) = collect(backend.generate(ask())).await;
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "the answer ran three times the idle timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(got, tokens);
    assert!(matches!(last, Ok(ModelOutput::Finished { .. })), "{last:?}");
}

#[tokio::test]
async fn a_stall_mid_answer_fails_after_the_tokens_so_far_and_closes_the_connection() {
    let server = ScriptedServer::start(vec![Script::Raw(vec![
        Step::Send(sse::content("one ")),
        Step::Send(sse::content("two ")),
        // Keep-alive comments are no sign of an answer.
        Step::Send(": keep-alive\n\n".into()),
        Step::Pause(Duration::from_millis(700)),
        Step::Send(": keep-alive\n\n".into()),
        Step::Pause(Duration::from_millis(1300)),
        Step::Send(sse::content("three")),
        Step::Send(sse::finish("stop")),
        Step::Send(sse::done()),
    ])])
    .await;
    let backend = backend(&server, one_second_timeouts);
    let started = Instant::now();
    let (tokens, last) = collect(backend.generate(ask())).await;
    let elapsed = started.elapsed();
    assert_eq!(tokens, ["one ", "two "]);
    let message = unavailable(last);
    assert!(message.contains("idle"), "{message}");
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_millis(1900),
        "failed one idle timeout after the last token: {elapsed:?}"
    );
    server.wait_all_closed(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn reasoning_is_a_first_token_and_keeps_the_answer_alive() {
    // 1.6 s of thinking, a delta every 200 ms, with 1 s timeouts.
    let mut steps = Vec::new();
    for i in 0..8 {
        steps.push(Step::Pause(Duration::from_millis(200)));
        steps.push(Step::Send(sse::reasoning_content(&format!("step {i}. "))));
    }
    steps.extend([
        Step::Send(sse::content("Done thinking.")),
        Step::Send(sse::finish("stop")),
        Step::Send(sse::done()),
    ]);
    let server = ScriptedServer::start(vec![Script::Raw(steps), Script::Silent]).await;
    let backend = backend(&server, one_second_timeouts);
    let (outputs, last) = collect_all(backend.generate(ask())).await;
    assert!(matches!(last, Ok(ModelOutput::Finished { .. })), "{last:?}");
    let reasoning = outputs
        .iter()
        .filter(|o| matches!(o, ModelOutput::Reasoning(_)))
        .count();
    assert_eq!(reasoning, 8);
    assert_eq!(
        outputs.last(),
        Some(&ModelOutput::Token("Done thinking.".into()))
    );

    // With no first-token timeout the idle timeout runs from the start,
    // and keep-alive comments do not reset it.
    let backend_idle_only = self::backend(&server, |args| {
        args.first_token_timeout_secs = 0;
        args.idle_timeout_secs = 1;
    });
    let started = Instant::now();
    let message = unavailable(collect(backend_idle_only.generate(ask())).await.1);
    assert!(message.contains("idle"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_event_over_the_bound_fails_the_answer_without_retry() {
    let server = ScriptedServer::start(vec![
        Script::Raw(vec![
            Step::Send(sse::content("fine ")),
            Step::Send(sse::content(&"x".repeat(4096))),
            Step::Send(sse::content("never read")),
        ]),
        // Many short `data:` lines that make one event too large.
        Script::Raw(vec![Step::Send(
            "data: {\n".to_string() + &"data: \"padding\"\n".repeat(200) + "\n",
        )]),
    ])
    .await;
    let backend = backend(&server, |args| args.max_event_bytes = 1024);
    let (tokens, last) = collect(backend.generate(ask())).await;
    assert_eq!(tokens, ["fine "]);
    let message = rejected(last);
    assert!(message.contains("over 1024 bytes"), "{message}");

    let (tokens, last) = collect(backend.generate(ask())).await;
    assert!(tokens.is_empty());
    assert!(rejected(last).contains("over 1024 bytes"));
}

#[tokio::test]
async fn an_answer_over_its_bound_ends_with_length_and_stops_reading() {
    let server = ScriptedServer::start(vec![
        // Forever, unless the backend stops reading.
        Script::Endless {
            pace: Duration::from_millis(5),
        },
        // The bound falls inside "wörld": the cut keeps whole characters.
        Script::answer(&["Hello ", "wörld"]),
        // Reasoning is bounded the same, apart from the answer.
        Script::Raw(vec![
            Step::Send(sse::reasoning_content("0123456789")),
            Step::Send(sse::reasoning_content("abcdef")),
            Step::Send(sse::content("never")),
        ]),
    ])
    .await;
    let backend = backend(&server, |args| args.max_answer_bytes = 8);
    let length = Ok(ModelOutput::Finished {
        finish_reason: FinishReason::Length,
        usage: None,
    });

    let (tokens, last) = collect(backend.generate(ask())).await;
    assert_eq!(tokens.concat(), "t0 t1 t2", "{tokens:?}");
    assert_eq!(last, length);
    server.wait_all_closed(Duration::from_secs(2)).await;

    let (tokens, last) = collect(backend.generate(ask())).await;
    assert_eq!(tokens.concat(), "Hello w", "ö would end at byte 9");
    assert_eq!(last, length);

    let (outputs, last) = collect_all(backend.generate(ask())).await;
    assert_eq!(outputs, [ModelOutput::Reasoning("0123456789"[..8].into()),]);
    assert_eq!(last, length);
}
