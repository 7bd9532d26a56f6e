//! The checks against hand-made streams: every violation kind is found,
//! and a clean or merely stale-ridden session passes.

use super::*;
use protocol::FinishReason;

struct Story {
    id: MessageId,
    events: Vec<SequencedEvent>,
    seq: u64,
}

impl Story {
    fn new() -> Self {
        Self {
            id: MessageId::new(),
            events: Vec::new(),
            seq: 10,
        }
    }
    fn push(&mut self, event: Event) -> &mut Self {
        // Another session's events interleave: seqs are not contiguous.
        self.seq += 3;
        self.events.push(SequencedEvent {
            seq: self.seq,
            event,
        });
        self
    }
    fn ask(&mut self) -> &mut Self {
        let id = self.id;
        self.push(Event::UserMessage {
            message_id: id,
            content: "q".into(),
            replaces: None,
        })
    }
    fn chunk(&mut self, attempt: u32, index: u32, text: &str) -> &mut Self {
        let id = self.id;
        self.push(Event::Chunk {
            message_id: id,
            attempt,
            index,
            text: text.into(),
            published_at_us: None,
        })
    }
    fn reasoning(&mut self, attempt: u32, index: u32, text: &str) -> &mut Self {
        let id = self.id;
        self.push(Event::Reasoning {
            message_id: id,
            attempt,
            index,
            text: text.into(),
            published_at_us: None,
        })
    }
    fn restart(&mut self, attempt: u32) -> &mut Self {
        let id = self.id;
        self.push(Event::Restart {
            message_id: id,
            attempt,
        })
    }
    fn done(&mut self, attempt: u32) -> &mut Self {
        let id = self.id;
        self.push(Event::Done {
            message_id: id,
            attempt,
            finish_reason: FinishReason::Stop,
            usage: None,
        })
    }
    fn expect(&self, text: &str) -> Vec<ExpectedAnswer> {
        vec![ExpectedAnswer {
            message_id: self.id,
            text: text.into(),
        }]
    }
}

fn kinds(v: &[Violation]) -> Vec<ViolationKind> {
    v.iter().map(|v| v.kind).collect()
}

#[test]
fn a_clean_session_passes() {
    let mut s = Story::new();
    s.ask().chunk(1, 0, "Hel").chunk(1, 1, "lo").done(1);
    let session = SessionId::new();
    assert!(check_stream(session, &s.events, &s.events).is_empty());
    assert!(check_answers(session, &s.events, &s.expect("Hello")).is_empty());
    assert_eq!(final_answer(&s.events, s.id).as_deref(), Some("Hello"));
}

#[test]
fn reasoning_has_its_own_index_and_is_not_the_answer() {
    let session = SessionId::new();
    let mut s = Story::new();
    s.ask()
        .reasoning(1, 0, "Let me")
        .reasoning(1, 1, " think")
        .restart(2)
        .reasoning(2, 0, "Let me think.")
        .chunk(2, 0, "Hel")
        .chunk(2, 1, "lo")
        .done(2);
    assert!(check_stream(session, &s.events, &s.events).is_empty());
    assert!(check_answers(session, &s.events, &s.expect("Hello")).is_empty());
    assert_eq!(final_answer(&s.events, s.id).as_deref(), Some("Hello"));
    let mine: Vec<&SequencedEvent> = s.events.iter().collect();
    assert!(
        timeline(&mine).contains("reasoning a1 #0..=1"),
        "{}",
        timeline(&mine)
    );

    // A hole in the reasoning is bad; reasoning of a later attempt
    // than the one that finished is bad, and the finished attempt's
    // chunks after it are stale to a client: the answer is missing.
    for (attempt, index, want) in [
        (2, 2, vec![ViolationKind::BadChunks]),
        (
            3,
            1,
            vec![ViolationKind::BadChunks, ViolationKind::WrongAnswer],
        ),
        // An earlier attempt's, after the later one began: stale.
        (1, 1, vec![]),
    ] {
        let mut s = Story::new();
        s.ask()
            .reasoning(2, 0, "a")
            .reasoning(attempt, index, "b")
            .chunk(2, 0, "x")
            .done(2);
        let found = check_answers(session, &s.events, &s.expect("x"));
        assert_eq!(kinds(&found), want, "a{attempt} #{index}: {found:?}");
    }
}

#[test]
fn a_superseded_attempts_late_events_are_ignored_as_a_client_ignores_them() {
    // Attempt 1 lost its job without knowing; some of its chunks reach
    // the stream after attempt 2's `restart`, one even after `done a2`.
    let session = SessionId::new();
    let mut s = Story::new();
    s.ask()
        .chunk(1, 0, "Hel")
        .restart(2)
        .chunk(2, 0, "Hel")
        .chunk(1, 1, "lo")
        .reasoning(1, 0, "hmm")
        .chunk(2, 1, "lo")
        .done(2)
        .chunk(1, 2, "!");
    assert!(check_stream(session, &s.events, &s.events).is_empty());
    let found = check_answers(session, &s.events, &s.expect("Hello"));
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(final_answer(&s.events, s.id).as_deref(), Some("Hello"));
    assert_eq!(stale_events(&s.events), 3);

    // The same late chunks with attempt 2 would be read: bad.
    let mut s = Story::new();
    s.ask()
        .restart(2)
        .chunk(2, 0, "Hel")
        .chunk(2, 1, "lo")
        .chunk(2, 1, "lo")
        .done(2);
    assert_eq!(
        kinds(&check_answers(session, &s.events, &s.expect("Hello"))),
        vec![ViolationKind::BadChunks, ViolationKind::WrongAnswer]
    );
    assert_eq!(stale_events(&s.events), 0);
    // And a late `done` of the old attempt is still a second terminal.
    let mut s = Story::new();
    s.ask().restart(2).chunk(2, 0, "x").done(2).done(1);
    assert_eq!(
        kinds(&check_answers(session, &s.events, &s.expect("x"))),
        vec![ViolationKind::ExtraTerminal]
    );
}

#[test]
fn only_the_final_attempt_counts() {
    let mut s = Story::new();
    s.ask()
        .chunk(1, 0, "Hel")
        .restart(2)
        .chunk(2, 0, "Hel")
        .chunk(2, 1, "lo")
        .done(2);
    let session = SessionId::new();
    assert!(check_answers(session, &s.events, &s.expect("Hello")).is_empty());
    assert_eq!(final_answer(&s.events, s.id).as_deref(), Some("Hello"));
    assert_eq!(
        kinds(&check_answers(session, &s.events, &s.expect("Help"))),
        vec![ViolationKind::WrongAnswer]
    );
}

#[test]
fn gaps_duplicates_and_disorder_are_found() {
    let mut s = Story::new();
    s.ask()
        .chunk(1, 0, "a")
        .chunk(1, 1, "b")
        .chunk(1, 2, "c")
        .done(1);
    let session = SessionId::new();
    let e = &s.events;
    // Missing two in a row: one gap.
    let seen = vec![e[0].clone(), e[3].clone(), e[4].clone()];
    assert_eq!(
        kinds(&check_stream(session, e, &seen)),
        vec![ViolationKind::Gap]
    );
    // A replay that repeats one.
    let mut seen = e.clone();
    seen.insert(3, e[2].clone());
    assert_eq!(
        kinds(&check_stream(session, e, &seen)),
        vec![ViolationKind::Duplicate]
    );
    // Swapped.
    let mut seen = e.clone();
    seen.swap(1, 2);
    assert_eq!(
        kinds(&check_stream(session, e, &seen)),
        vec![ViolationKind::OutOfOrder]
    );
    // Altered text, and a seq from nowhere.
    let mut seen = e.clone();
    if let Event::Chunk { text, .. } = &mut seen[1].event {
        *text = "x".into();
    }
    seen.push(SequencedEvent {
        seq: 1_000,
        event: e[1].event.clone(),
    });
    assert_eq!(
        kinds(&check_stream(session, e, &seen)),
        vec![ViolationKind::Mismatch, ViolationKind::Unexpected]
    );
}

#[test]
fn terminals_are_counted_and_must_be_done() {
    let session = SessionId::new();
    let mut s = Story::new();
    s.ask().chunk(1, 0, "a");
    assert_eq!(
        kinds(&check_answers(session, &s.events, &s.expect("a"))),
        vec![ViolationKind::MissingTerminal]
    );
    s.done(1).done(1);
    assert_eq!(
        kinds(&check_answers(session, &s.events, &s.expect("a"))),
        vec![ViolationKind::ExtraTerminal]
    );
    let mut s = Story::new();
    let id = s.id;
    s.ask().push(Event::Error {
        message_id: Some(id),
        code: protocol::ErrorCode::RetriesExhausted,
        message: "x".into(),
    });
    assert_eq!(
        kinds(&check_answers(session, &s.events, &s.expect("a"))),
        vec![ViolationKind::FailedAnswer]
    );
}

#[test]
fn chunk_numbering_is_checked() {
    let session = SessionId::new();
    let mut s = Story::new();
    s.ask().chunk(1, 0, "a").chunk(1, 2, "b").done(1);
    assert_eq!(
        kinds(&check_answers(session, &s.events, &s.expect("ab"))),
        vec![ViolationKind::BadChunks]
    );
    let mut s = Story::new();
    s.ask().chunk(1, 0, "ab").done(2);
    assert_eq!(
        kinds(&check_answers(session, &s.events, &s.expect("ab"))),
        vec![ViolationKind::BadChunks]
    );
}
