//! The checks of a session after a run: what the client saw against the
//! session's stream itself (`GET /api/events`), and every answer against
//! the text the demo backend is known to produce.
//!
//! - every stored event reached the client exactly once, in `seq` order,
//!   with no gap and nothing the stream does not hold, however often the
//!   client reconnected;
//! - each question has exactly one terminal event, a `done`;
//! - the final attempt's chunks (those after the last `restart`) are
//!   numbered 0, 1, 2… and spell exactly the expected answer.
//!
//! Answers are read as PROTOCOL.md tells a client to: a `chunk`,
//! `reasoning` or `restart` of an attempt lower than the highest one seen
//! for the message is stale and ignored (see [`as_a_client_acts_on`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use protocol::frames::SequencedEvent;
use protocol::{Event, MessageId, SessionId};
use serde::Serialize;

/// What went wrong, for counting in a summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// Stored events the client never received.
    Gap,
    /// An event received twice (or a question echoed twice in the stream).
    Duplicate,
    /// An event received after one with a higher `seq`.
    OutOfOrder,
    /// The client received something else than the stream holds at that seq.
    Mismatch,
    /// The client received a `seq` the stream does not hold for the session.
    Unexpected,
    /// The final attempt's text is not the expected answer.
    WrongAnswer,
    /// The final attempt's chunks are not numbered 0, 1, 2… or carry
    /// another attempt than the `done`.
    BadChunks,
    /// A question without a terminal event.
    MissingTerminal,
    /// A question with more than one terminal event, or events after it.
    ExtraTerminal,
    /// A question that ended in `error` or `cancelled` instead of `done`.
    FailedAnswer,
    /// A session that did not finish its turns before the deadline.
    Unfinished,
    /// The stream could not be read to check a session.
    Unverifiable,
}

impl ViolationKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ViolationKind::Gap => "gap",
            ViolationKind::Duplicate => "duplicate",
            ViolationKind::OutOfOrder => "out_of_order",
            ViolationKind::Mismatch => "mismatch",
            ViolationKind::Unexpected => "unexpected",
            ViolationKind::WrongAnswer => "wrong_answer",
            ViolationKind::BadChunks => "bad_chunks",
            ViolationKind::MissingTerminal => "missing_terminal",
            ViolationKind::ExtraTerminal => "extra_terminal",
            ViolationKind::FailedAnswer => "failed_answer",
            ViolationKind::Unfinished => "unfinished",
            ViolationKind::Unverifiable => "unverifiable",
        }
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One broken guarantee, with enough detail to find it in the logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub session: SessionId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} session={}", self.kind, self.session)?;
        if let Some(id) = self.message_id {
            write!(f, " message={id}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// Compares what a client received (in arrival order, duplicates kept)
/// with the session's stored events.
pub fn check_stream(
    session: SessionId,
    truth: &[SequencedEvent],
    seen: &[SequencedEvent],
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let violation = |kind, message_id, detail: String| Violation {
        kind,
        session,
        message_id,
        detail,
    };
    let stored: HashMap<u64, &Event> = truth.iter().map(|e| (e.seq, &e.event)).collect();
    let mut received = HashSet::new();
    let mut highest = 0;
    for e in seen {
        let id = e.event.message_id();
        if !received.insert(e.seq) {
            violations.push(violation(
                ViolationKind::Duplicate,
                id,
                format!("seq {} received again", e.seq),
            ));
            continue;
        }
        if e.seq < highest {
            violations.push(violation(
                ViolationKind::OutOfOrder,
                id,
                format!("seq {} received after seq {highest}", e.seq),
            ));
        }
        highest = highest.max(e.seq);
        match stored.get(&e.seq) {
            None => violations.push(violation(
                ViolationKind::Unexpected,
                id,
                format!("seq {} is not a stored event of the session", e.seq),
            )),
            Some(event) if **event != e.event => violations.push(violation(
                ViolationKind::Mismatch,
                id,
                format!("seq {}: received {:?}, stored {:?}", e.seq, e.event, event),
            )),
            Some(_) => {}
        }
    }
    // Missing events, as runs of consecutive stored events.
    let mut run: Vec<&SequencedEvent> = Vec::new();
    let flush = |run: &mut Vec<&SequencedEvent>, violations: &mut Vec<Violation>| {
        if let (Some(first), Some(last)) = (run.first(), run.last()) {
            violations.push(violation(
                ViolationKind::Gap,
                first.event.message_id(),
                format!(
                    "{} stored event(s) never received: seq {}..={}",
                    run.len(),
                    first.seq,
                    last.seq
                ),
            ));
        }
        run.clear();
    };
    for e in truth {
        if received.contains(&e.seq) {
            flush(&mut run, &mut violations);
        } else {
            run.push(e);
        }
    }
    flush(&mut run, &mut violations);
    violations
}

/// A question asked, with what its answer must be.
#[derive(Clone, Debug)]
pub struct ExpectedAnswer {
    pub message_id: MessageId,
    pub text: String,
}

/// Checks every question's events in the stream: one echo, exactly one
/// terminal event and it is `done`, nothing after it, and the final
/// attempt spells the expected text.
pub fn check_answers(
    session: SessionId,
    truth: &[SequencedEvent],
    expected: &[ExpectedAnswer],
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut by_message: BTreeMap<MessageId, Vec<&SequencedEvent>> = BTreeMap::new();
    for e in truth {
        if let Some(id) = e.event.message_id() {
            by_message.entry(id).or_default().push(e);
        }
    }
    for want in expected {
        let id = want.message_id;
        let stored = by_message.get(&id).map(Vec::as_slice).unwrap_or_default();
        let (events, _stale) = as_a_client_acts_on(stored);
        let mut push = |kind, detail: String| {
            violations.push(Violation {
                kind,
                session,
                message_id: Some(id),
                detail,
            })
        };
        let echoes = events
            .iter()
            .filter(|e| matches!(e.event, Event::UserMessage { .. }))
            .count();
        if echoes > 1 {
            push(
                ViolationKind::Duplicate,
                format!("the question was stored {echoes} times"),
            );
        }
        let terminals: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.event.is_terminal())
            .map(|(i, _)| i)
            .collect();
        let Some(&end) = terminals.first() else {
            push(
                ViolationKind::MissingTerminal,
                format!("{} event(s), none terminal", events.len()),
            );
            continue;
        };
        if terminals.len() > 1 || end + 1 != events.len() {
            push(
                ViolationKind::ExtraTerminal,
                format!(
                    "{} terminal event(s), {} event(s) after the first: {}",
                    terminals.len(),
                    events.len() - end - 1,
                    timeline(&events)
                ),
            );
        }
        let attempt = match &events[end].event {
            Event::Done { attempt, .. } => *attempt,
            other => {
                push(
                    ViolationKind::FailedAnswer,
                    format!("ended with {other:?} at seq {}", events[end].seq),
                );
                continue;
            }
        };
        let body = &events[..end];
        let last_restart = body
            .iter()
            .rposition(|e| matches!(e.event, Event::Restart { .. }))
            .map_or(0, |i| i + 1);
        let mut text = String::new();
        let mut bad = Vec::new();
        // The answer's chunks and the reasoning each count from 0 in the
        // final attempt, with no holes, in their own sequence.
        let (mut next_chunk, mut next_reasoning) = (0, 0);
        for e in &body[last_restart..] {
            let (kind, a, index, next) = match &e.event {
                Event::Chunk {
                    attempt: a,
                    index,
                    text: piece,
                    ..
                } => {
                    text.push_str(piece);
                    ("chunk", a, index, &mut next_chunk)
                }
                Event::Reasoning {
                    attempt: a, index, ..
                } => ("reasoning", a, index, &mut next_reasoning),
                _ => continue,
            };
            if *a != attempt || *index != *next {
                bad.push(format!(
                    "seq {}: {kind} attempt {a} index {index}, expected attempt {attempt} index {next}",
                    e.seq
                ));
            }
            *next = index.saturating_add(1);
        }
        if !bad.is_empty() {
            push(
                ViolationKind::BadChunks,
                format!("{}; stream: {}", bad.join("; "), timeline(stored)),
            );
        }
        if text != want.text {
            let at = text
                .chars()
                .zip(want.text.chars())
                .take_while(|(a, b)| a == b)
                .count();
            push(
                ViolationKind::WrongAnswer,
                format!(
                    "{} chars received, {} expected, first difference at char {at}",
                    text.chars().count(),
                    want.text.chars().count()
                ),
            );
        }
    }
    violations
}

/// A message's events in short, runs of chunks (and of reasoning) folded:
/// `user@5, reasoning a1 #0..=3 @6..=7, chunk a1 #0..=14 @8..=60, done a1@63, …`.
pub fn timeline(events: &[&SequencedEvent]) -> String {
    let mut parts: Vec<String> = Vec::new();
    // (kind, attempt, first index, last index, first seq, last seq) of the open run.
    type Run = (&'static str, u32, u32, u32, u64, u64);
    let mut run: Option<Run> = None;
    let close = |run: &mut Option<Run>, parts: &mut Vec<String>| {
        if let Some((kind, a, i0, i1, s0, s1)) = run.take() {
            parts.push(format!("{kind} a{a} #{i0}..={i1} @{s0}..={s1}"));
        }
    };
    for e in events {
        let piece = match &e.event {
            Event::Chunk { attempt, index, .. } => Some(("chunk", attempt, index)),
            Event::Reasoning { attempt, index, .. } => Some(("reasoning", attempt, index)),
            _ => None,
        };
        match (piece, &e.event) {
            (Some((kind, attempt, index)), _) => match &mut run {
                Some((k, a, _, last, _, s1))
                    if *k == kind && a == attempt && *index == *last + 1 =>
                {
                    *last = *index;
                    *s1 = e.seq;
                }
                _ => {
                    close(&mut run, &mut parts);
                    run = Some((kind, *attempt, *index, *index, e.seq, e.seq));
                }
            },
            (None, other) => {
                close(&mut run, &mut parts);
                parts.push(match other {
                    Event::UserMessage { .. } => format!("user@{}", e.seq),
                    Event::Restart { attempt, .. } => format!("restart a{attempt}@{}", e.seq),
                    Event::Done { attempt, .. } => format!("done a{attempt}@{}", e.seq),
                    Event::Cancelled { .. } => format!("cancelled@{}", e.seq),
                    Event::Error { code, .. } => format!("error {}@{}", code.as_str(), e.seq),
                    Event::Chunk { .. } | Event::Reasoning { .. } => String::new(),
                });
            }
        }
    }
    close(&mut run, &mut parts);
    parts.join(", ")
}

/// One message's events (in stream order) as a client following
/// PROTOCOL.md acts on them, and how many it ignores as stale: a `chunk`,
/// `reasoning` or `restart` whose attempt is lower than the highest seen
/// so far for the message. Such an event is a superseded attempt's publish
/// that reached the stream after the newer attempt's `restart` (its worker
/// had not yet learnt it lost the job); the stream cannot refuse it without
/// a round trip per chunk, so the attempt number fences it at the reader.
pub fn as_a_client_acts_on<'a>(events: &[&'a SequencedEvent]) -> (Vec<&'a SequencedEvent>, usize) {
    let mut highest = 0;
    let mut kept = Vec::with_capacity(events.len());
    let mut stale = 0;
    for &e in events {
        match e.event.attempt() {
            // A terminal event is never stale: a second one is a violation.
            Some(a) if a < highest && !e.event.is_terminal() => stale += 1,
            Some(a) => {
                highest = highest.max(a);
                kept.push(e);
            }
            None => kept.push(e),
        }
    }
    (kept, stale)
}

/// How many of a session's stored events a client ignores as stale (see
/// [`as_a_client_acts_on`]).
pub fn stale_events(truth: &[SequencedEvent]) -> usize {
    let mut by_message: BTreeMap<MessageId, Vec<&SequencedEvent>> = BTreeMap::new();
    for e in truth {
        if let Some(id) = e.event.message_id() {
            by_message.entry(id).or_default().push(e);
        }
    }
    by_message
        .values()
        .map(|events| as_a_client_acts_on(events).1)
        .sum()
}

/// The text of a message's final attempt as a client would show it: the
/// chunks after the last `restart`, in order, stale ones ignored. `None`
/// before the message's `done`.
pub fn final_answer(events: &[SequencedEvent], message_id: MessageId) -> Option<String> {
    let stored: Vec<&SequencedEvent> = events
        .iter()
        .filter(|e| e.event.message_id() == Some(message_id))
        .collect();
    let (kept, _) = as_a_client_acts_on(&stored);
    let mine: Vec<&Event> = kept.iter().map(|e| &e.event).collect();
    let done = mine.iter().position(|e| matches!(e, Event::Done { .. }))?;
    let start = mine[..done]
        .iter()
        .rposition(|e| matches!(e, Event::Restart { .. }))
        .map_or(0, |i| i + 1);
    Some(
        mine[start..done]
            .iter()
            .filter_map(|e| match e {
                Event::Chunk { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests;
