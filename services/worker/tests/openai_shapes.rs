//! The `openai` backend against the shapes real servers send, each a case
//! of the scripted server: reasoning in its three forms, `usage` in the
//! last chunk or absent, `finish_reason` `length`, an `error` object inside
//! the stream, keep-alive comments, `data:` without a space, CRLF.
#![allow(clippy::unwrap_used)]

mod openai_support;

use openai_support::{args, collect_all, sse, Script, ScriptedServer, Step};
use protocol::{FinishReason, Usage};
use serde_json::json;
use worker::backends::openai::OpenAiBackend;
use worker::backends::{BackendError, Generation, ModelBackend, ModelOutput};

/// What a case must come out as.
struct Expected {
    reasoning: &'static str,
    answer: &'static str,
    last: Result<ModelOutput, BackendError>,
}

fn finished(
    finish_reason: FinishReason,
    usage: Option<(u32, u32)>,
) -> Result<ModelOutput, BackendError> {
    Ok(ModelOutput::Finished {
        finish_reason,
        usage: usage.map(|(prompt_tokens, completion_tokens)| Usage {
            prompt_tokens,
            completion_tokens,
        }),
    })
}

fn raw(parts: Vec<String>) -> Script {
    Script::Raw(parts.into_iter().map(Step::Send).collect())
}

fn usage_chunk(prompt: u32, completion: u32) -> String {
    sse::data(
        &json!({"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}),
    )
}

fn cases() -> Vec<(&'static str, Script, Expected)> {
    let stop = |usage| finished(FinishReason::Stop, usage);
    vec![
        (
            "reasoning_content (vLLM, llama.cpp, DeepSeek), usage in a chunk of its own",
            raw(vec![
                sse::delta(json!({"role": "assistant", "content": ""})),
                sse::reasoning_content("The user"),
                sse::reasoning_content(" says hi."),
                sse::content("Hello"),
                sse::content("!"),
                sse::finish("stop"),
                usage_chunk(9, 5),
                sse::done(),
            ]),
            Expected {
                reasoning: "The user says hi.",
                answer: "Hello!",
                last: stop(Some((9, 5))),
            },
        ),
        (
            "reasoning (Ollama, OpenRouter), usage in the last chunk",
            raw(vec![
                sse::reasoning("Short"),
                sse::reasoning(" thought."),
                sse::content("Hi"),
                sse::finish_with_usage("stop", 7, 3),
                sse::done(),
            ]),
            Expected {
                reasoning: "Short thought.",
                answer: "Hi",
                last: stop(Some((7, 3))),
            },
        ),
        (
            "<think> inline in content, the tags split across deltas, no usage",
            raw(vec![
                sse::content("<thi"),
                sse::content("nk>\nI should"),
                sse::content(" greet.</th"),
                sse::content("ink>\n\nHel"),
                sse::content("lo."),
                sse::finish("stop"),
                sse::done(),
            ]),
            Expected {
                reasoning: "I should greet.",
                answer: "Hello.",
                last: stop(None),
            },
        ),
        (
            "finish_reason length",
            raw(vec![
                sse::content("Once upon"),
                sse::finish("length"),
                sse::done(),
            ]),
            Expected {
                reasoning: "",
                answer: "Once upon",
                last: finished(FinishReason::Length, None),
            },
        ),
        (
            "an error object inside the stream",
            raw(vec![
                sse::content("Par"),
                sse::data(
                    &json!({"error": {"message": "upstream provider overloaded", "code": 502}}),
                ),
            ]),
            Expected {
                reasoning: "",
                answer: "Par",
                last: Err(BackendError::Rejected(
                    "upstream provider overloaded".into(),
                )),
            },
        ),
        (
            "an error string inside the stream (Ollama)",
            raw(vec![sse::data(&json!({"error": "model crashed"}))]),
            Expected {
                reasoning: "",
                answer: "",
                last: Err(BackendError::Rejected("model crashed".into())),
            },
        ),
        (
            "keep-alive comments",
            raw(vec![
                ": keep-alive\n\n".into(),
                sse::content("a"),
                ":keep-alive\n\n".into(),
                sse::content("b"),
                ": ping - 2026-01-01 00:00:00\n\n".into(),
                sse::finish("stop"),
                sse::done(),
            ]),
            Expected {
                reasoning: "",
                answer: "ab",
                last: stop(None),
            },
        ),
        (
            "data: without a space",
            raw(vec![
                sse::content("x").replacen("data: ", "data:", 1),
                sse::finish("stop").replacen("data: ", "data:", 1),
                "data:[DONE]\n\n".into(),
            ]),
            Expected {
                reasoning: "",
                answer: "x",
                last: stop(None),
            },
        ),
        (
            "CRLF line endings",
            raw(vec![
                sse::content("crlf").replace('\n', "\r\n"),
                ": keep-alive\r\n\r\n".into(),
                sse::finish("stop").replace('\n', "\r\n"),
                sse::done().replace('\n', "\r\n"),
            ]),
            Expected {
                reasoning: "",
                answer: "crlf",
                last: stop(None),
            },
        ),
    ]
}

#[tokio::test]
async fn each_shape_real_servers_send_is_read() {
    let cases = cases();
    let server =
        ScriptedServer::start(cases.iter().map(|(_, script, _)| script.clone()).collect()).await;
    let backend = OpenAiBackend::new(args(&server.base_url())).unwrap();
    for (name, _, expected) in cases {
        let (outputs, last) = collect_all(backend.generate(Generation {
            prompt: "q".into(),
            history: Vec::new(),
            model: None,
        }))
        .await;
        let (mut reasoning, mut answer) = (String::new(), String::new());
        for output in &outputs {
            match output {
                ModelOutput::Reasoning(text) => {
                    assert!(
                        answer.is_empty(),
                        "{name}: reasoning after the answer began"
                    );
                    reasoning.push_str(text);
                }
                ModelOutput::Token(text) => answer.push_str(text),
                ModelOutput::Finished { .. } => unreachable!(),
            }
        }
        assert_eq!(reasoning, expected.reasoning, "{name}: reasoning");
        assert_eq!(answer, expected.answer, "{name}: answer");
        assert_eq!(last, expected.last, "{name}: last item");
    }
    assert_eq!(
        server.requests().len(),
        9,
        "one request per case, none retried"
    );
}
