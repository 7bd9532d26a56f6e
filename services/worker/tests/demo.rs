//! The demo backend: deterministic, exact length, varied, and paced.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use worker::backends::demo::{
    answer, answer_tokens, reasoning, reasoning_tokens, DemoBackend, DemoConfig,
};
use worker::backends::{Generation, ModelBackend, ModelOutput};

fn backend(tokens_per_sec: f64, first_token_ms: u64, answer_tokens: usize) -> DemoBackend {
    DemoBackend::new(DemoConfig {
        tokens_per_sec,
        first_token: Duration::from_millis(first_token_ms),
        answer_tokens,
        reasoning_tokens: 0,
        models: vec!["gpt-demo".into()],
        stamp_tokens: false,
    })
}

async fn stream_all(backend: &DemoBackend, prompt: &str) -> (Vec<String>, bool) {
    let mut stream = backend.generate(Generation {
        prompt: prompt.into(),
        history: Vec::new(),
        model: None,
    });
    let (mut tokens, mut finished) = (Vec::new(), false);
    while let Some(item) = stream.next().await {
        match item.unwrap() {
            ModelOutput::Token(t) => {
                assert!(!finished, "nothing after finished");
                tokens.push(t)
            }
            ModelOutput::Reasoning(r) => panic!("the demo does not reason: {r:?}"),
            ModelOutput::Finished { .. } => finished = true,
        }
    }
    (tokens, finished)
}

#[test]
fn answers_are_deterministic_exact_and_varied() {
    let a = answer("What is the capital of France?", 120);
    assert_eq!(a, answer("What is the capital of France?", 120));
    assert_ne!(a, answer("How do I bake bread?", 120));
    for n in [1, 7, 80, 500] {
        let tokens = answer_tokens("count me", n);
        assert_eq!(tokens.len(), n);
        assert!(tokens.iter().all(|t| !t.trim().is_empty()));
        assert_eq!(tokens.concat(), answer("count me", n));
    }
    assert!(answer("x", 0).is_empty());
    // Readable prose: sentences and paragraphs, not "chunk 1, chunk 2".
    let long = answer("Tell me everything", 400);
    assert!(long.contains(". "));
    assert!(long.contains("\n\n"));
    assert!(long
        .split_whitespace()
        .all(|w| !w.chars().any(char::is_control)));
    // A shorter answer is a prefix of the longer one up to its last token.
    let short = answer("Tell me everything", 50);
    let stem = short.trim_end_matches('.').trim_end();
    assert!(long.starts_with(stem.rsplit_once(' ').map_or(stem, |(head, _)| head)));
}

#[test]
fn serves_demo_and_configured_models_only() {
    let b = backend(0.0, 0, 5);
    assert!(b.serves_model("demo"));
    assert!(b.serves_model("gpt-demo"));
    assert!(!b.serves_model("gpt-4"));
}

#[tokio::test]
async fn zero_rate_streams_without_any_delay() {
    let b = backend(0.0, 10_000, 2_000);
    let started = Instant::now();
    let (tokens, finished) = stream_all(&b, "benchmark me").await;
    assert!(finished);
    assert_eq!(tokens.len(), 2_000);
    assert_eq!(tokens.concat(), answer("benchmark me", 2_000));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn pacing_respects_first_token_delay_and_rate() {
    let b = backend(100.0, 100, 11);
    let started = Instant::now();
    let (tokens, finished) = stream_all(&b, "slowly please").await;
    assert!(finished);
    assert_eq!(tokens.concat(), answer("slowly please", 11));
    // 100 ms before the first token, then 10 intervals of 10 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(195),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_thinking_demo_reasons_first_and_its_answer_is_unchanged() {
    let b = DemoBackend::new(DemoConfig {
        tokens_per_sec: 0.0,
        first_token: Duration::ZERO,
        answer_tokens: 12,
        reasoning_tokens: 9,
        models: Vec::new(),
        stamp_tokens: false,
    });
    let mut stream = b.generate(Generation {
        prompt: "Why is the sky blue?".into(),
        history: Vec::new(),
        model: None,
    });
    let mut outputs = Vec::new();
    while let Some(item) = stream.next().await {
        outputs.push(item.unwrap());
    }
    let thinking: Vec<String> = outputs
        .iter()
        .take_while(|o| matches!(o, ModelOutput::Reasoning(_)))
        .map(|o| match o {
            ModelOutput::Reasoning(r) => r.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(thinking, reasoning_tokens("Why is the sky blue?", 9));
    assert_eq!(thinking.concat(), reasoning("Why is the sky blue?", 9));
    assert_ne!(
        reasoning("Why is the sky blue?", 9),
        reasoning("How do I bake bread?", 9)
    );
    let answer_text: String = outputs[9..]
        .iter()
        .filter_map(|o| match o {
            ModelOutput::Token(t) => Some(t.as_str()),
            ModelOutput::Reasoning(r) => panic!("reasoning after the answer began: {r:?}"),
            ModelOutput::Finished { .. } => None,
        })
        .collect();
    assert_eq!(
        answer_text,
        answer("Why is the sky blue?", 12),
        "thinking does not change the answer"
    );
    assert!(matches!(
        outputs.last(),
        Some(ModelOutput::Finished { usage: Some(u), .. }) if u.completion_tokens == 12
    ));
    assert!(reasoning_tokens("anything", 0).is_empty());
}
