//! The body `DefaultChatTransport` posts: `{id, messages, trigger,
//! messageId?}` plus whatever the app adds (assistant-ui adds `system`,
//! `tools`, …), which is ignored. Only the last user message's text is
//! read: the conversation's context is the session's own history. An app
//! that follows the SDK's persistence guide sends only that message, as
//! `message`; it is read the same way.
//!
//! A stock client posts the whole conversation with every question, so
//! `messages` is kept as each message's raw JSON (checked, not taken
//! apart) and only the last user message is read into fields.

use protocol::MessageId;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
pub(crate) struct UiChatBody {
    /// The chat: our session id.
    pub(crate) id: String,
    #[serde(default)]
    messages: Vec<Box<RawValue>>,
    /// The last message alone (`prepareSendMessagesRequest` returning
    /// `{id, message: messages.at(-1)}`); read before `messages`.
    #[serde(default)]
    message: Option<UiMessage>,
    #[serde(default)]
    trigger: Option<String>,
    /// With `regenerate-message`: the answer to replace.
    #[serde(default, rename = "messageId")]
    message_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct UiMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    role: String,
    #[serde(default)]
    parts: Vec<UiPart>,
}

#[derive(Debug, Clone, Deserialize)]
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

    /// The last user message: `message` when it is one, else the last of
    /// `messages` whose role is `user`, read from the end. The messages
    /// before it are never read; one read that is not a UI message is 400.
    fn last_user(&self) -> Result<UiMessage, ApiError> {
        if let Some(message) = self.message.as_ref().filter(|m| m.role == "user") {
            return Ok(message.clone());
        }
        for raw in self.messages.iter().rev() {
            let message: UiMessage = serde_json::from_str(raw.get())
                .map_err(|e| ApiError::BadRequest(format!("messages: not a UI message: {e}")))?;
            if message.role == "user" {
                return Ok(message);
            }
        }
        Err(ApiError::BadRequest("no user message to answer".into()))
    }

    /// The question: the last user message's text parts, joined, and its id
    /// when the client chose a UUIDv4 (a retried POST is then the same
    /// question; the SDK's own short ids are not ours, and the gateway
    /// makes one up).
    pub(crate) fn question(&self) -> Result<(String, Option<MessageId>), ApiError> {
        let message = self.last_user()?;
        let text = message
            .parts
            .iter()
            .filter(|p| p.kind == "text")
            .filter_map(|p| p.text.as_deref())
            .collect::<Vec<_>>()
            .join("\n");
        let id = message.id.as_deref().and_then(|id| id.parse().ok());
        Ok((text, id))
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

    fn body(json: &str) -> UiChatBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_question_is_the_last_user_messages_text() {
        let body = body(
            r#"{"id":"x","trigger":"submit-message","system":"ignored","tools":{},
                "messages":[
                  {"id":"a","role":"user","parts":[{"type":"text","text":"first"}]},
                  {"id":"b","role":"assistant","parts":[{"type":"text","text":"answer"}]},
                  {"id":"c","role":"user","parts":[{"type":"step-start"},{"type":"text","text":"second"},{"type":"file","url":"data:,"},{"type":"text","text":"more"}]}
                ]}"#,
        );
        assert_eq!(body.trigger().unwrap(), Trigger::Submit);
        assert_eq!(body.question().unwrap(), ("second\nmore".to_string(), None));
    }

    #[test]
    fn only_the_messages_from_the_last_user_message_on_are_read() {
        let id = MessageId::new();
        // Earlier turns the gateway does not understand are never read: a
        // stock client posts the whole conversation, in its own shapes.
        let body = body(&format!(
            r#"{{"id":"x","messages":[
                  7,
                  {{"role":"assistant","parts":[{{"type":"text","text":42}}]}},
                  {{"id":"{id}","role":"user","parts":[{{"type":"text","text":"now"}}]}},
                  {{"id":"b","role":"assistant","parts":[]}}
                ]}}"#
        ));
        assert_eq!(body.question().unwrap(), ("now".to_string(), Some(id)));
        // One that has to be read and is not a UI message is refused.
        let odd = self::body(
            r#"{"id":"x","messages":[{"role":"user","parts":[]},{"role":"user","parts":"no"}]}"#,
        );
        assert!(matches!(odd.question(), Err(ApiError::BadRequest(_))));
        let none = self::body(r#"{"id":"x","messages":[{"role":"assistant","parts":[]}]}"#);
        assert!(matches!(none.question(), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn the_last_message_alone_is_read_as_message() {
        let id = MessageId::new();
        let body = body(&format!(
            r#"{{"id":"x","message":{{"id":"{id}","role":"user","parts":[{{"type":"text","text":"only"}}]}}}}"#
        ));
        assert_eq!(body.question().unwrap(), ("only".to_string(), Some(id)));
        // An assistant `message` (a regenerate sends the last message) is
        // not a question; `messages` is looked at instead.
        let body = self::body(
            r#"{"id":"x","message":{"role":"assistant","parts":[]},
                "messages":[{"role":"user","parts":[{"type":"text","text":"from messages"}]}]}"#,
        );
        assert_eq!(body.question().unwrap().0, "from messages");
    }

    #[test]
    fn regenerate_names_the_answer_and_unknown_triggers_are_refused() {
        let id = MessageId::new();
        let body = body(&format!(
            r#"{{"id":"x","trigger":"regenerate-message","messageId":"{id}","messages":[]}}"#
        ));
        assert_eq!(body.trigger().unwrap(), Trigger::Regenerate);
        assert_eq!(body.regenerated(), Some(id));
        let odd = self::body(r#"{"id":"x","trigger":"rewind"}"#);
        assert!(odd.trigger().is_err());
        assert!(odd.question().is_err());
    }
}
