//! The `openai` backend against a scripted OpenAI-compatible server on a
//! loopback port: streaming, the conversation as context, cancel closing
//! the connection, and how each kind of failure is reported.
#![allow(clippy::unwrap_used)]

mod openai_support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use openai_support::{args, collect, Script, ScriptedServer, WAIT};
use protocol::records::{Turn, TurnStatus};
use protocol::{FinishReason, MessageId, Usage};
use serde_json::json;
use worker::backends::openai::OpenAiBackend;
use worker::backends::{BackendError, Generation, ModelBackend, ModelOutput};

fn ask(prompt: &str) -> Generation {
    Generation {
        prompt: prompt.into(),
        history: Vec::new(),
        model: None,
    }
}

fn turn(user: &str, assistant: &str, status: TurnStatus) -> Turn {
    Turn {
        message_id: MessageId::new(),
        user: user.into(),
        assistant: assistant.into(),
        status,
        created_at: 1,
        finished_at: 2,
        attempt: 1,
        finish_reason: None,
        usage: None,
        reasoning_chars: 0,
        user_seq: 1,
        replaces: None,
        extra: Default::default(),
    }
}

fn unavailable(result: Result<ModelOutput, BackendError>) -> (String, Option<Duration>) {
    match result {
        Err(BackendError::Unavailable {
            message,
            retry_after,
        }) => (message, retry_after),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn streams_the_answer_in_order_with_finish_reason_and_usage() {
    let server = ScriptedServer::start(vec![
        Script::Stream {
            tokens: ["Hel", "lo", ", ", "wör", "ld", "!"]
                .map(String::from)
                .to_vec(),
            finish_reason: Some("length".into()),
            usage: Some((12, 6)),
            done: true,
            pace: Duration::from_millis(5),
        },
        Script::answer(&["ok"]),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "  sk-test-key\n").unwrap();
    let mut args = args(&server.base_url());
    args.api_key_file = Some(key_file);
    args.temperature = Some(0.5);
    args.max_tokens = Some(64);
    let backend = OpenAiBackend::new(args).unwrap();

    let (tokens, last) = collect(backend.generate(ask("Say hello"))).await;
    assert_eq!(tokens.concat(), "Hello, wörld!");
    assert_eq!(tokens.len(), 6, "each delta is one token: {tokens:?}");
    assert_eq!(
        last.unwrap(),
        ModelOutput::Finished {
            finish_reason: FinishReason::Length,
            usage: Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 6
            }),
        }
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer sk-test-key")
    );
    let body = &requests[0].body;
    assert_eq!(body["model"], "test-model", "no model asked = the default");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "Say hello"}])
    );

    // A model the client named is passed on.
    assert!(backend.serves_model("test-model"));
    assert!(backend.serves_model("other-model"));
    assert!(!backend.serves_model("gpt-5"));
    let (_, last) = collect(backend.generate(Generation {
        model: Some("other-model".into()),
        ..ask("again")
    }))
    .await;
    assert!(matches!(last, Ok(ModelOutput::Finished { .. })));
    assert_eq!(server.requests()[1].body["model"], "other-model");
    assert!(server.requests()[1].body.get("temperature").is_some());
}

#[tokio::test]
async fn the_conversation_so_far_is_the_context_most_recent_kept() {
    let server = ScriptedServer::start(vec![
        Script::answer(&["a"]),
        Script::answer(&["b"]),
        Script::answer(&["c"]),
    ])
    .await;
    let history = vec![
        turn("What is NATS?", "A messaging system.", TurnStatus::Done),
        turn("Is it fast?", "", TurnStatus::Failed),
        turn(
            "And JetStream?",
            "Its persistence lay",
            TurnStatus::Cancelled,
        ),
    ];
    let generation = Generation {
        prompt: "Thanks!".into(),
        history,
        model: None,
    };
    let mut wide = args(&server.base_url());
    wide.system_prompt = Some("Be brief.".into());
    let mut few_turns = wide.clone();
    few_turns.context_turns = 1;
    let mut few_chars = wide.clone();
    // The cancelled turn is 33 chars, the first done one 32: room for one.
    few_chars.context_chars = 40;

    for args in [wide, few_turns, few_chars] {
        let backend = OpenAiBackend::new(args).unwrap();
        let (_, last) = collect(backend.generate(generation.clone())).await;
        assert!(matches!(last, Ok(ModelOutput::Finished { .. })), "{last:?}");
    }
    let requests = server.requests();
    assert_eq!(
        requests[0].body["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is NATS?"},
            {"role": "assistant", "content": "A messaging system."},
            {"role": "user", "content": "And JetStream?"},
            {"role": "assistant", "content": "Its persistence lay"},
            {"role": "user", "content": "Thanks!"},
        ]),
        "failed turns are left out, a cancelled one is what the user saw"
    );
    let only_last = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "And JetStream?"},
        {"role": "assistant", "content": "Its persistence lay"},
        {"role": "user", "content": "Thanks!"},
    ]);
    assert_eq!(requests[1].body["messages"], only_last, "context_turns = 1");
    assert_eq!(
        requests[2].body["messages"], only_last,
        "context_chars = 40"
    );
}

#[tokio::test]
async fn dropping_the_stream_closes_the_upstream_connection() {
    let server = ScriptedServer::start(vec![Script::Endless {
        pace: Duration::from_millis(20),
    }])
    .await;
    let backend = OpenAiBackend::new(args(&server.base_url())).unwrap();
    let mut stream = backend.generate(ask("Tell me a long story"));
    for _ in 0..3 {
        let item = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
        assert!(matches!(item, Some(Ok(ModelOutput::Token(_)))), "{item:?}");
    }
    assert_eq!(server.open_connections(), 1);
    assert_eq!(server.open_streams(), 1);

    drop(stream);
    // The server notices at its next write; it writes every 20 ms.
    server.wait_all_closed(Duration::from_secs(2)).await;
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_unavailable() {
    let server = ScriptedServer::start(vec![
        Script::status(500, r#"{"error":{"message":"boom"}}"#),
        Script::Status {
            status: 429,
            body: r#"{"error":{"message":"slow down"}}"#.into(),
            retry_after: Some("7".into()),
        },
        Script::Status {
            status: 503,
            body: "overloaded".into(),
            retry_after: None,
        },
    ])
    .await;
    let backend = OpenAiBackend::new(args(&server.base_url())).unwrap();

    let (tokens, last) = collect(backend.generate(ask("q"))).await;
    assert!(tokens.is_empty());
    let (message, retry_after) = unavailable(last);
    assert!(
        message.contains("500") && message.contains("boom"),
        "{message}"
    );
    assert_eq!(retry_after, None);

    let (message, retry_after) = unavailable(collect(backend.generate(ask("q"))).await.1);
    assert!(message.contains("slow down"), "{message}");
    assert_eq!(retry_after, Some(Duration::from_secs(7)));

    let (message, _) = unavailable(collect(backend.generate(ask("q"))).await.1);
    assert!(message.contains("overloaded"), "{message}");
}

#[tokio::test]
async fn a_bad_request_is_rejected_with_the_servers_message() {
    let server = ScriptedServer::start(vec![
        Script::status(400, r#"{"error":{"message":"bad model","type":"invalid"}}"#),
        Script::status(
            404,
            r#"{"error":"model \"x\" not found, try pulling it first"}"#,
        ),
    ])
    .await;
    let backend = OpenAiBackend::new(args(&server.base_url())).unwrap();
    match collect(backend.generate(ask("q"))).await.1 {
        Err(BackendError::Rejected(message)) => {
            assert!(message.contains("bad model"), "{message}");
            assert!(!message.contains("\"type\""), "only the message: {message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // Ollama's shape: `{"error": "..."}`.
    match collect(backend.generate(ask("q"))).await.1 {
        Err(BackendError::Rejected(message)) => {
            assert!(message.contains("not found"), "{message}")
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stream_cut_short_is_unavailable_after_the_tokens_so_far() {
    let server = ScriptedServer::start(vec![
        Script::Stream {
            tokens: ["one ", "two "].map(String::from).to_vec(),
            finish_reason: None,
            usage: None,
            done: false,
            pace: Duration::ZERO,
        },
        // A finish reason and then the end, without `[DONE]`: complete.
        Script::Stream {
            tokens: ["fine"].map(String::from).to_vec(),
            finish_reason: Some("stop".into()),
            usage: None,
            done: false,
            pace: Duration::ZERO,
        },
    ])
    .await;
    let backend = OpenAiBackend::new(args(&server.base_url())).unwrap();
    let (tokens, last) = collect(backend.generate(ask("q"))).await;
    assert_eq!(tokens, ["one ", "two "]);
    let (message, _) = unavailable(last);
    assert!(message.contains("ended early"), "{message}");

    let (tokens, last) = collect(backend.generate(ask("q"))).await;
    assert_eq!(tokens, ["fine"]);
    assert_eq!(
        last.unwrap(),
        ModelOutput::Finished {
            finish_reason: FinishReason::Stop,
            usage: None
        }
    );
}

#[tokio::test]
async fn no_first_token_in_time_is_unavailable_and_closes_the_connection() {
    let server = ScriptedServer::start(vec![Script::Silent]).await;
    let mut args = args(&server.base_url());
    args.first_token_timeout_secs = 1;
    let backend = OpenAiBackend::new(args).unwrap();
    let started = Instant::now();
    let (tokens, last) = collect(backend.generate(ask("q"))).await;
    let elapsed = started.elapsed();
    assert!(tokens.is_empty());
    let (message, _) = unavailable(last);
    assert!(message.contains("first token"), "{message}");
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    server.wait_all_closed(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    // A port that was just free: nothing listens on it.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let backend = OpenAiBackend::new(args(&format!("http://127.0.0.1:{port}"))).unwrap();
    let (message, _) = unavailable(collect(backend.generate(ask("q"))).await.1);
    assert!(message.to_lowercase().contains("connect"), "{message}");
}

#[tokio::test]
async fn configuration_is_checked_when_the_backend_is_built() {
    assert!(OpenAiBackend::new(args("not a url")).is_err());
    let mut both = args("http://127.0.0.1:1");
    both.api_key = Some("k".into());
    both.api_key_file = Some("/nonexistent".into());
    assert!(OpenAiBackend::new(both).is_err());
    let mut missing = args("http://127.0.0.1:1");
    missing.api_key_file = Some("/nonexistent/key".into());
    let error = OpenAiBackend::new(missing).err().unwrap().to_string();
    assert!(error.contains("key file"), "{error}");
}

#[tokio::test]
async fn https_is_supported_and_a_failed_handshake_is_unavailable() {
    // The TLS stack is built in (no panic for a missing crypto provider);
    // a plain-HTTP server fails the handshake, a passing failure.
    let server = ScriptedServer::start(vec![]).await;
    let base_url = format!("https://{}", server.addr);
    let backend = OpenAiBackend::new(args(&base_url)).unwrap();
    let (message, _) = unavailable(collect(backend.generate(ask("q"))).await.1);
    assert!(!message.is_empty());
    assert!(server.requests().is_empty());
}
