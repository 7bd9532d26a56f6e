//! `GET /api/ui/chat/{id}/messages`: the finished turns as the AI SDK's
//! `UIMessage[]`, for `useChat({ messages })` on a reloaded page. Each
//! question once with its latest answer; the earlier answers of a
//! regenerated question are in the answer's `metadata.versions`, oldest
//! first. The answer in flight is left out (the stream GET brings it), its
//! question is not.

use std::collections::HashMap;

use protocol::records::{current_turns, Turn, TurnStatus};
use serde_json::{json, Value};

use super::inflight::InFlight;

/// The id of a question's `UIMessage`: answers use the message id itself,
/// so the ids never collide.
fn question_id(turn_id: impl std::fmt::Display) -> String {
    format!("q-{turn_id}")
}

fn status(status: TurnStatus) -> &'static str {
    match status {
        TurnStatus::Done => "done",
        TurnStatus::Cancelled => "cancelled",
        TurnStatus::Failed => "failed",
    }
}

fn text_parts(text: &str) -> Vec<Value> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "text", "text": text})]
    }
}

/// The conversation as `UIMessage`s.
pub(crate) fn ui_messages(turns: Vec<Turn>, in_flight: Option<&InFlight>) -> Vec<Value> {
    let by_id: HashMap<_, _> = turns.iter().map(|t| (t.message_id, t.clone())).collect();
    let current = current_turns(turns, in_flight.and_then(|f| f.replaces));
    let mut out = Vec::with_capacity(current.len() * 2 + 1);
    for turn in &current {
        // The versions this answer replaced, oldest first.
        let mut versions = Vec::new();
        let mut earlier = turn.replaces;
        while let Some(id) = earlier {
            let Some(replaced) = by_id.get(&id) else {
                break;
            };
            versions.push(json!({
                "messageId": replaced.message_id,
                "text": replaced.assistant,
                "status": status(replaced.status),
            }));
            earlier = replaced.replaces;
            if versions.len() > by_id.len() {
                break;
            }
        }
        versions.reverse();
        out.push(json!({
            "id": question_id(turn.message_id),
            "role": "user",
            "parts": text_parts(&turn.user),
        }));
        let mut metadata = json!({"status": status(turn.status)});
        if let Some(usage) = turn.usage {
            metadata["usage"] = json!({
                "inputTokens": usage.prompt_tokens,
                "outputTokens": usage.completion_tokens,
            });
        }
        if !versions.is_empty() {
            metadata["versions"] = Value::Array(versions);
        }
        out.push(json!({
            "id": turn.message_id,
            "role": "assistant",
            "parts": text_parts(&turn.assistant),
            "metadata": metadata,
        }));
    }
    if let Some(flight) = in_flight {
        out.push(json!({
            "id": question_id(flight.message_id),
            "role": "user",
            "parts": text_parts(&flight.question),
        }));
    }
    out
}
