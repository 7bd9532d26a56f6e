//! Records NATS keeps about sessions and turns: the KV value of a session,
//! the history record of a finished turn, and a dead letter.

use serde::{Deserialize, Serialize};

use crate::events::{ChatRequest, FinishReason, Usage};
use crate::ids::{MessageId, SessionId, TokenHash, UserKey};

/// The value of a session's key in `chat_sessions`. Updated with
/// compare-and-set by gateways (attach, accept) and workers (finish), never
/// per chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub created_at_ms: u64,
    pub last_seen_ms: u64,
    pub token_hash: TokenHash,
    /// The gateway node that last attached a socket or served a call.
    pub node: String,
    /// Messages accepted and not yet finished: bounds the per-session load.
    #[serde(default)]
    pub active: Vec<ActiveMessage>,
    /// The most recently finished messages (bounded), so a retry or a late
    /// cancel of a finished message is recognised instead of being unknown.
    #[serde(default)]
    pub recent: Vec<MessageId>,
    /// Messages whose in-flight entry expired unfinished (bounded like
    /// `recent`): JetStream no longer deduplicates them, so a retry must be
    /// recognised here, or it would be stored and queued as a new question.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expired: Vec<MessageId>,
    /// The question accepted last: the one a `regenerate` may replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_question: Option<LastQuestion>,
    /// The user who owns the session (`GATEWAY_AUTH=jwt`); none for an
    /// anonymous session, which its token alone opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserKey>,
}

/// The session's most recently accepted question (an ordinary one or a
/// regeneration), so a regenerate knows what it replaces without reading
/// the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastQuestion {
    pub message_id: MessageId,
    /// Set when it is itself a regeneration: the message it replaces (a
    /// retried regenerate finds its question again through it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<MessageId>,
}

/// How many finished message ids a session record remembers.
pub const RECENT_MESSAGES_KEPT: usize = 64;

impl SessionRecord {
    pub fn new(token_hash: TokenHash, node: String, now_ms: u64) -> Self {
        Self {
            created_at_ms: now_ms,
            last_seen_ms: now_ms,
            token_hash,
            node,
            active: Vec::new(),
            recent: Vec::new(),
            expired: Vec::new(),
            last_question: None,
            owner: None,
        }
    }

    /// The same record, owned by `owner`.
    pub fn owned_by(mut self, owner: UserKey) -> Self {
        self.owner = Some(owner);
        self
    }

    pub fn is_active(&self, message: MessageId) -> bool {
        self.active.iter().any(|m| m.message_id == message)
    }

    pub fn is_finished(&self, message: MessageId) -> bool {
        self.recent.contains(&message)
    }

    /// Whether the message's answer is ending: its terminal event is being
    /// stored (or is stored), its turn not yet recorded.
    pub fn is_ending(&self, message: MessageId) -> bool {
        self.active
            .iter()
            .any(|m| m.message_id == message && m.ending)
    }

    /// Stops counting a message against the in-flight limit once its
    /// answer is ending, without marking it answered (that is `finish`): it
    /// stays active for a late cancel; true when it changed anything.
    pub fn mark_ending(&mut self, message: MessageId) -> bool {
        let mut changed = false;
        for m in self.active.iter_mut().filter(|m| m.message_id == message) {
            changed |= !m.ending;
            m.ending = true;
        }
        changed
    }

    /// Counts a newly accepted message in flight from `now_ms` and makes it
    /// the session's last question (`replaces`: the one it regenerates).
    pub fn admit(&mut self, message_id: MessageId, now_ms: u64, replaces: Option<MessageId>) {
        self.active.push(ActiveMessage {
            message_id,
            accepted_at_ms: now_ms,
            ending: false,
        });
        self.last_question = Some(LastQuestion {
            message_id,
            replaces,
        });
    }

    /// Messages that count against the session's in-flight limit.
    pub fn in_flight(&self) -> usize {
        self.active.iter().filter(|m| !m.ending).count()
    }

    /// Moves a message from `active` to `recent`; true when it changed anything.
    pub fn finish(&mut self, message: MessageId) -> bool {
        let before = self.active.len();
        self.active.retain(|m| m.message_id != message);
        let was_recent = self.recent.contains(&message);
        if !was_recent {
            self.recent.push(message);
            if self.recent.len() > RECENT_MESSAGES_KEPT {
                let excess = self.recent.len() - RECENT_MESSAGES_KEPT;
                self.recent.drain(..excess);
            }
        }
        before != self.active.len() || !was_recent
    }

    /// Moves active entries older than `max_age_ms` to `expired`: a job
    /// that was lost outside the work-queue's guarantees must not block its
    /// session forever, and a late retry of it is still recognised.
    pub fn expire_active(&mut self, now_ms: u64, max_age_ms: u64) {
        let (stale, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|m| now_ms.saturating_sub(m.accepted_at_ms) > max_age_ms);
        self.active = live;
        for m in stale {
            if !self.expired.contains(&m.message_id) {
                self.expired.push(m.message_id);
            }
        }
        if self.expired.len() > RECENT_MESSAGES_KEPT {
            let excess = self.expired.len() - RECENT_MESSAGES_KEPT;
            self.expired.drain(..excess);
        }
    }

    /// Whether the message's in-flight entry expired unfinished.
    pub fn is_expired(&self, message: MessageId) -> bool {
        self.expired.contains(&message)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveMessage {
    pub message_id: MessageId,
    pub accepted_at_ms: u64,
    /// Its terminal event is being stored: no longer counted as in flight.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ending: bool,
}

/// A user's record in `chat_sessions` (key `subjects::user_key`), updated
/// with compare-and-set by gateways: the session list `GET /api/sessions`
/// pages through, and what the per-user quotas count. Bounded: at most
/// `--user-max-sessions` summaries, `--user-max-in-flight` answers and
/// `--user-sessions-per-minute` creation times.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    #[serde(default)]
    pub sessions: Vec<SessionSummary>,
    /// Answers accepted for any of the user's sessions and not known to be
    /// finished; entries are checked against their session's record and
    /// dropped once the answer ended.
    #[serde(default)]
    pub answers: Vec<UserAnswer>,
    /// When the user's sessions of the last minute were created (ms).
    #[serde(default)]
    pub created_recently: Vec<u64>,
}

/// One session of a user's list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub id: SessionId,
    /// The first question, trimmed, until the user renames it.
    #[serde(default)]
    pub title: String,
    /// Milliseconds since the epoch.
    pub created: u64,
    /// The last activity (created, renamed, a question asked).
    pub updated: u64,
}

/// An answer of one of the user's sessions, counted against the user's
/// in-flight quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAnswer {
    pub session_id: SessionId,
    pub message_id: MessageId,
    pub accepted_at_ms: u64,
}

impl UserRecord {
    pub fn session(&self, id: SessionId) -> Option<&SessionSummary> {
        self.sessions.iter().find(|s| s.id == id)
    }

    pub fn session_mut(&mut self, id: SessionId) -> Option<&mut SessionSummary> {
        self.sessions.iter_mut().find(|s| s.id == id)
    }

    /// The sessions newest activity first (ties by id, so the order is total
    /// and a cursor is a position in it).
    pub fn newest_first(&self) -> Vec<&SessionSummary> {
        let mut sessions: Vec<&SessionSummary> = self.sessions.iter().collect();
        sessions.sort_by(|a, b| b.updated.cmp(&a.updated).then(b.id.cmp(&a.id)));
        sessions
    }

    /// Forgets creations older than a minute before `now_ms`.
    pub fn forget_old_creations(&mut self, now_ms: u64) {
        self.created_recently
            .retain(|&at| now_ms.saturating_sub(at) < 60_000);
    }
}

/// How a turn ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    Done,
    Cancelled,
    Failed,
}

/// One finished turn in `CHAT_HISTORY`, and one entry of `GET /api/history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub message_id: MessageId,
    pub user: String,
    pub assistant: String,
    pub status: TurnStatus,
    /// Milliseconds since the epoch when the question was accepted.
    pub created_at: u64,
    #[serde(default)]
    pub finished_at: u64,
    #[serde(default)]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Sequence in `CHAT_EVENTS` of the user-message event.
    #[serde(default)]
    pub user_seq: u64,
    /// Characters of reasoning the model streamed before `assistant` (its
    /// text is in the stored `reasoning` events, never in the answer, and
    /// never sent back to the model); absent when it did not reason.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reasoning_chars: u64,
    /// Set on a regeneration's turn: the message whose answer it replaces.
    /// Both turns stay in the history; the later one is the current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<MessageId>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The conversation as it stands now: the turns no later turn replaces, in
/// their order, without `regenerating` (the message a running regeneration
/// replaces). What a model is given as context: each question once, with
/// its latest answer.
pub fn current_turns(turns: Vec<Turn>, regenerating: Option<MessageId>) -> Vec<Turn> {
    let replaced: std::collections::HashSet<MessageId> = turns
        .iter()
        .filter_map(|t| t.replaces)
        .chain(regenerating)
        .collect();
    turns
        .into_iter()
        .filter(|t| !replaced.contains(&t.message_id))
        .collect()
}

/// A job that will not be tried again, in `CHAT_DEAD`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub request: ChatRequest,
    pub reason: String,
    pub deliveries: u64,
    pub failed_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SessionToken;

    #[test]
    fn mark_ending_frees_the_slot_without_marking_the_message_answered() {
        let (a, b) = (MessageId::new(), MessageId::new());
        let mut record = SessionRecord::new(SessionToken::generate().hash(), "n".into(), 0);
        for id in [a, b] {
            record.active.push(ActiveMessage {
                message_id: id,
                accepted_at_ms: 1,
                ending: false,
            });
        }
        assert_eq!(record.in_flight(), 2);
        assert!(record.mark_ending(a));
        assert_eq!(record.in_flight(), 1);
        assert!(
            record.is_active(a) && !record.is_finished(a),
            "a late cancel still finds it"
        );
        assert!(!record.mark_ending(a));
        assert!(record.finish(a), "finishing later still records it");
        assert!(record.is_finished(a));
    }

    #[test]
    fn finish_moves_active_to_recent_and_bounds_it() {
        let mut r = SessionRecord::new(SessionToken::generate().hash(), "n".into(), 0);
        let ids: Vec<MessageId> = (0..RECENT_MESSAGES_KEPT + 5)
            .map(|_| MessageId::new())
            .collect();
        for id in &ids {
            r.active.push(ActiveMessage {
                message_id: *id,
                accepted_at_ms: 0,
                ending: false,
            });
        }
        assert!(r.finish(ids[0]));
        assert!(!r.finish(ids[0]), "finishing twice changes nothing");
        for id in &ids[1..] {
            r.finish(*id);
        }
        assert!(r.active.is_empty());
        assert_eq!(r.recent.len(), RECENT_MESSAGES_KEPT);
        assert!(!r.is_finished(ids[0]));
        assert!(r.is_finished(*ids.last().unwrap()));
    }

    fn turn(user: &str, replaces: Option<MessageId>) -> Turn {
        Turn {
            message_id: MessageId::new(),
            user: user.into(),
            assistant: format!("answer to {user}"),
            status: TurnStatus::Done,
            created_at: 0,
            finished_at: 0,
            attempt: 1,
            finish_reason: None,
            usage: None,
            user_seq: 0,
            reasoning_chars: 0,
            replaces,
        }
    }

    #[test]
    fn current_turns_keep_each_question_once_with_its_latest_answer() {
        let first = turn("q1", None);
        let asked = turn("q2", None);
        let again = turn("q2", Some(asked.message_id));
        let third = turn("q2", Some(again.message_id));
        let later = turn("q3", None);
        let all = vec![
            first.clone(),
            asked.clone(),
            again.clone(),
            third.clone(),
            later.clone(),
        ];
        let ids = |turns: Vec<Turn>| turns.iter().map(|t| t.message_id).collect::<Vec<_>>();
        assert_eq!(
            ids(current_turns(all.clone(), None)),
            [first.message_id, third.message_id, later.message_id]
        );
        // The job regenerating q3 sees the conversation without q3's answer.
        assert_eq!(
            ids(current_turns(all, Some(later.message_id))),
            [first.message_id, third.message_id]
        );
        // Without regenerations nothing is left out.
        let plain = vec![first.clone(), later.clone()];
        assert_eq!(current_turns(plain.clone(), None), plain);
    }

    #[test]
    fn a_turn_names_its_reasoning_only_when_there_was_some() {
        let old = r#"{"message_id":"7d3f0a3e-3c1b-4d55-9a43-2f4b52c1a0de","user":"q","assistant":"a","status":"done","created_at":1}"#;
        let mut turn: Turn = serde_json::from_str(old).unwrap();
        assert_eq!(
            turn.reasoning_chars, 0,
            "a turn stored before reasoning reads"
        );
        assert!(!serde_json::to_string(&turn).unwrap().contains("reasoning"));
        turn.reasoning_chars = 42;
        let json = serde_json::to_string(&turn).unwrap();
        assert!(json.contains(r#""reasoning_chars":42"#), "{json}");
        assert_eq!(serde_json::from_str::<Turn>(&json).unwrap(), turn);
    }

    #[test]
    fn stale_active_entries_expire() {
        let mut r = SessionRecord::new(SessionToken::generate().hash(), "n".into(), 0);
        r.active.push(ActiveMessage {
            message_id: MessageId::new(),
            accepted_at_ms: 100,
            ending: false,
        });
        r.active.push(ActiveMessage {
            message_id: MessageId::new(),
            accepted_at_ms: 900,
            ending: false,
        });
        let stale = r.active[0].message_id;
        r.expire_active(1_000, 500);
        assert_eq!(r.active.len(), 1);
        assert_eq!(r.active[0].accepted_at_ms, 900);
        assert!(
            r.is_expired(stale),
            "a late retry of it is still recognised"
        );
        assert!(!r.is_active(stale));
    }
}
