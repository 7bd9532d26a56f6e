//! The AI SDK's SSE endpoints as a test client reads them.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

pub fn chat_body(session: impl std::fmt::Display, text: &str) -> Value {
    json!({
        "id": session.to_string(),
        "trigger": "submit-message",
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": text}]}],
        "system": "ignored, as assistant-ui sends it",
    })
}

/// `GET /api/ui/chat/{id}/messages`: the chat's finished turns.
pub async fn listed_messages(
    app: &super::TestApp,
    session: impl std::fmt::Display,
    token: &str,
) -> Value {
    app.get(&format!("/api/ui/chat/{session}/messages"), token)
        .await
        .json()
        .await
        .unwrap()
}

/// How a read of an SSE body ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// `[DONE]` came.
    Done,
    /// The reader stopped after the chunks it asked for.
    Enough,
    /// The body broke off (or ended) before `[DONE]`.
    Broken,
}

/// Reads SSE `data:` payloads until `[DONE]` (or `stop_after` of them).
pub async fn read_chunks(response: reqwest::Response, stop_after: Option<usize>) -> Vec<Value> {
    let (chunks, ending) = read_sse(response, stop_after).await;
    assert_ne!(ending, Ending::Broken, "the stream ended before [DONE]");
    chunks
}

/// Reads SSE `data:` payloads until `[DONE]`, `stop_after` of them, or the
/// body's end; every event must come within 10 s.
pub async fn read_sse(
    response: reqwest::Response,
    stop_after: Option<usize>,
) -> (Vec<Value>, Ending) {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut chunks = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("an SSE event in time");
        let Some(Ok(bytes)) = next else {
            return (chunks, Ending::Broken);
        };
        buffer.push_str(std::str::from_utf8(&bytes).expect("UTF-8"));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            for data in block.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    return (chunks, Ending::Done);
                }
                chunks.push(serde_json::from_str(data).expect("a JSON chunk"));
                if stop_after == Some(chunks.len()) {
                    return (chunks, Ending::Enough);
                }
            }
        }
    }
}

pub fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter(|c| c["type"] == "text-delta")
        .filter_map(|c| c["delta"].as_str())
        .collect()
}
