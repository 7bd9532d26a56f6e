//! The body `DefaultChatTransport` posts: `{id, messages, trigger,
//! messageId?}` plus whatever the app adds (assistant-ui adds `system`,
//! `tools`, …), which is ignored. Only the last user message's text is
//! read: the conversation's context is the session's own history.

use protocol::MessageId;
use serde::Deserialize;

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub(crate) struct UiChatBody {
    /// The chat: our session id.
    pub(crate) id: String,
    #[serde(default)]
    messages: Vec<UiMessage>,
    #[serde(default)]
    trigger: Option<String>,
    /// With `regenerate-message`: the answer to replace.
    #[serde(default, rename = "messageId")]
    message_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UiMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    role: String,
    #[serde(default)]
    parts: Vec<UiPart>,
}

#[derive(Debug, Deserialize)]
struct UiPart {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Submit,
    Regenerate,
}

impl UiChatBody {
    pub(crate) fn trigger(&self) -> Result<Trigger, ApiError> {
        match self.trigger.as_deref() {
            None | Some("submit-message") => Ok(Trigger::Submit),
            Some("regenerate-message") => Ok(Trigger::Regenerate),
            Some(other) => Err(ApiError::BadRequest(format!(
                "unknown trigger {:?}",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }

    fn last_user(&self) -> Option<&UiMessage> {
        self.messages.iter().rev().find(|m| m.role == "user")
    }

    /// The last user message's text parts, joined.
    pub(crate) fn question(&self) -> Result<String, ApiError> {
        let message = self
            .last_user()
            .ok_or_else(|| ApiError::BadRequest("no user message to answer".into()))?;
        Ok(message
            .parts
            .iter()
            .filter(|p| p.kind == "text")
            .filter_map(|p| p.text.as_deref())
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// The question's id when the client chose a UUIDv4 (a retried POST is
    /// then the same question); the SDK's own short ids are not ours, and
    /// the gateway makes one up.
    pub(crate) fn question_id(&self) -> Option<MessageId> {
        self.last_user()?.id.as_deref()?.parse().ok()
    }

    /// The answer a `regenerate-message` replaces, when it names one of
    /// ours; otherwise the session's last question.
    pub(crate) fn regenerated(&self) -> Option<MessageId> {
        self.message_id.as_deref()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_is_the_last_user_messages_text() {
        let body: UiChatBody = serde_json::from_str(
            r#"{"id":"x","trigger":"submit-message","system":"ignored","tools":{},
                "messages":[
                  {"id":"a","role":"user","parts":[{"type":"text","text":"first"}]},
                  {"id":"b","role":"assistant","parts":[{"type":"text","text":"answer"}]},
                  {"id":"c","role":"user","parts":[{"type":"step-start"},{"type":"text","text":"second"},{"type":"file","url":"data:,"},{"type":"text","text":"more"}]}
                ]}"#,
        )
        .unwrap();
        assert_eq!(body.trigger().unwrap(), Trigger::Submit);
        assert_eq!(body.question().unwrap(), "second\nmore");
        assert_eq!(body.question_id(), None);
    }

    #[test]
    fn regenerate_names_the_answer_and_unknown_triggers_are_refused() {
        let id = MessageId::new();
        let body: UiChatBody = serde_json::from_str(&format!(
            r#"{{"id":"x","trigger":"regenerate-message","messageId":"{id}","messages":[]}}"#
        ))
        .unwrap();
        assert_eq!(body.trigger().unwrap(), Trigger::Regenerate);
        assert_eq!(body.regenerated(), Some(id));
        let odd: UiChatBody = serde_json::from_str(r#"{"id":"x","trigger":"rewind"}"#).unwrap();
        assert!(odd.trigger().is_err());
        assert!(odd.question().is_err());
    }
}
