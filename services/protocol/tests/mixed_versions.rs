//! Old and new gateways and workers run side by side during a rolling
//! upgrade. These tests hold the contract of PROTOCOL.md "Compatibility"
//! on JSON fixtures of today's stored formats (`tests/fixtures/stored/`):
//! today's formats are read and written back unchanged, records that lack
//! fields added since are read, and fields this version does not know
//! survive its rewrites. A change that cannot read yesterday's data fails
//! here.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::path::PathBuf;

use protocol::records::{self, DeadLetter, SessionRecord, Turn, TurnStatus};
use protocol::{CancelNotice, ChatRequest, Event, MessageId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stored")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn value(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// Reads `text` as a `T` and writes it again.
fn rewrite<T: DeserializeOwned + Serialize>(text: &str) -> Value {
    let parsed: T = serde_json::from_str(text).unwrap();
    serde_json::to_value(&parsed).unwrap()
}

/// `v` with a field of a later version added at `pointer` (an object).
fn with_later_field(mut v: Value, pointer: &str) -> Value {
    let target = v.pointer_mut(pointer).unwrap().as_object_mut().unwrap();
    target.insert(
        "added_later".into(),
        json!({"kind": "a field of a newer version", "n": [1, 2]}),
    );
    v
}

fn later_field_at(v: &Value, pointer: &str) -> bool {
    v.pointer(pointer)
        .and_then(|o| o.get("added_later"))
        .is_some_and(|f| f["kind"] == "a field of a newer version")
}

#[test]
fn todays_records_read_and_write_back_unchanged() {
    for (name, written) in [
        (
            "session_record.json",
            rewrite::<SessionRecord> as fn(&str) -> Value,
        ),
        ("turn.json", rewrite::<Turn>),
        ("chat_request.json", rewrite::<ChatRequest>),
        ("chat_request_oldest.json", rewrite::<ChatRequest>),
        ("dead_letter.json", rewrite::<DeadLetter>),
        ("cancel_notice.json", rewrite::<CancelNotice>),
        ("claim_notice.json", rewrite::<CancelNotice>),
    ] {
        let text = fixture(name);
        assert_eq!(written(&text), value(&text), "{name}");
    }
}

#[test]
fn todays_events_read_and_write_back_unchanged() {
    let text = fixture("events.jsonl");
    let mut kinds = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let event: Event = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        kinds.insert(event.kind());
        assert_eq!(serde_json::to_value(&event).unwrap(), value(line), "{line}");
    }
    assert_eq!(
        kinds.len(),
        7,
        "every kind of event has a fixture: {kinds:?}"
    );
}

#[test]
fn records_without_the_fields_added_since_are_read() {
    let record: SessionRecord =
        serde_json::from_str(&fixture("session_record_oldest.json")).unwrap();
    assert!(record.active.is_empty() && record.recent.is_empty() && record.expired.is_empty());
    assert_eq!(record.last_question, None);
    assert_eq!(record.in_flight(), 0);

    let turn: Turn = serde_json::from_str(&fixture("turn_oldest.json")).unwrap();
    assert_eq!(turn.status, TurnStatus::Cancelled);
    assert_eq!((turn.finished_at, turn.attempt, turn.user_seq), (0, 0, 0));
    assert_eq!(
        (turn.usage, turn.replaces, turn.reasoning_chars),
        (None, None, 0)
    );

    let request: ChatRequest = serde_json::from_str(&fixture("chat_request_oldest.json")).unwrap();
    assert_eq!((request.model, request.replaces), (None, None));

    let notice: CancelNotice = serde_json::from_str(&fixture("cancel_notice.json")).unwrap();
    assert_eq!((notice.claimed_by, notice.attempt), (None, None));
}

#[test]
fn a_session_record_keeps_fields_it_does_not_know_when_rewritten() {
    let mut v = value(&fixture("session_record.json"));
    for at in ["", "/active/0", "/active/1", "/last_question"] {
        v = with_later_field(v, at);
    }
    let mut record: SessionRecord = serde_json::from_value(v).unwrap();
    // What a gateway and a worker of this version do to it.
    let finished = record.active[1].message_id;
    record.finish(finished);
    record.last_seen_ms += 1;
    let written = serde_json::to_value(&record).unwrap();
    assert!(later_field_at(&written, ""), "{written:#}");
    assert!(later_field_at(&written, "/active/0"), "{written:#}");
    assert!(later_field_at(&written, "/last_question"), "{written:#}");
    // A new question replaces `last_question`: a newer version's fields of
    // the old one go with it, as a newer version would do too.
    record.admit(MessageId::new(), 2, None);
    let written = serde_json::to_value(&record).unwrap();
    assert!(later_field_at(&written, ""));
    assert!(!later_field_at(&written, "/last_question"));
}

#[test]
fn turns_jobs_and_dead_letters_keep_fields_they_do_not_know() {
    let turn = with_later_field(value(&fixture("turn.json")), "");
    assert!(later_field_at(&rewrite::<Turn>(&turn.to_string()), ""));

    let job = with_later_field(value(&fixture("chat_request.json")), "");
    let request: ChatRequest = serde_json::from_value(job).unwrap();
    // A job that fails for good is written into a dead letter whole.
    let letter = DeadLetter {
        request: request.clone(),
        reason: "retries_exhausted".into(),
        deliveries: 4,
        failed_at_ms: 1,
        extra: Default::default(),
    };
    let written = serde_json::to_value(&letter).unwrap();
    assert!(later_field_at(&written, "/request"), "{written:#}");
    assert!(request.extra.contains_key("added_later"));

    let dead = with_later_field(
        with_later_field(value(&fixture("dead_letter.json")), ""),
        "/request",
    );
    let written = rewrite::<DeadLetter>(&dead.to_string());
    assert!(later_field_at(&written, "") && later_field_at(&written, "/request"));
}

#[test]
fn events_with_fields_they_do_not_know_are_read_and_forwarded_whole() {
    let text = fixture("events.jsonl");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let newer = with_later_field(value(line), "").to_string();
        // Read by this version (the field ignored)…
        let event: Event = serde_json::from_str(&newer).unwrap_or_else(|e| panic!("{newer}: {e}"));
        assert_eq!(serde_json::to_value(&event).unwrap(), value(line));
        // …and forwarded to clients as stored: a gateway never rewrites an
        // event, it splices the `seq` in.
        let frame = protocol::frames::with_seq(newer.as_bytes(), 9).unwrap();
        let sent = value(&frame);
        assert!(later_field_at(&sent, ""), "{frame}");
        assert_eq!(sent["seq"], 9);
    }
}

#[test]
fn claims_and_cancel_flags_read_todays_and_a_later_versions_values() {
    let keys = value(&fixture("keys.json"));
    let claim = keys["claim"].as_str().unwrap();
    assert_eq!(records::parse_claim(claim.as_bytes()), Some(2));
    assert_eq!(&records::claim_value(2)[..], claim.as_bytes());
    // A later version may write an object; this one reads its attempt.
    assert_eq!(
        records::parse_claim(br#"{"attempt":3,"added_later":true}"#),
        Some(3)
    );
    assert_eq!(records::parse_claim(b"not a claim"), None);
    // A cancel flag is set by its presence: any value counts.
    assert_eq!(keys["cancel_flag"], "1");
}
