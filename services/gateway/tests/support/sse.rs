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

/// Reads SSE `data:` payloads until `[DONE]` (or `stop_after` of them).
pub async fn read_chunks(response: reqwest::Response, stop_after: Option<usize>) -> Vec<Value> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut chunks = Vec::new();
    loop {
        let bytes = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("an SSE event in time")
            .expect("the stream ended before [DONE]")
            .expect("the SSE body");
        buffer.push_str(std::str::from_utf8(&bytes).expect("UTF-8"));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            for data in block.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    return chunks;
                }
                chunks.push(serde_json::from_str(data).expect("a JSON chunk"));
                if stop_after == Some(chunks.len()) {
                    return chunks;
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
