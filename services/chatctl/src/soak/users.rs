//! The soak's users: each one opens a session, asks a few questions with
//! pauses between them, now and then cancels an answer, asks for it again,
//! or loses its socket mid-answer (and resumes with `after_seq`), then
//! audits the session against its stream and opens the next one, until the
//! load stops.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{Event, MessageId};
use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;

use super::Activity;
use crate::client::{Api, ChatClient, ClientOptions, SocketDropper};
use crate::verify::{self, ExpectedAnswer, Violation, ViolationKind};

/// Where a `drop` fault finds a user's current socket.
pub(super) type DropSlot = Arc<Mutex<Option<SocketDropper>>>;

/// What every user adds to.
#[derive(Debug, Default)]
pub(super) struct Totals {
    pub activity: Activity,
    pub violations: Vec<Violation>,
}

/// How long the audit may keep reading a session's stream.
const AUDIT_PATIENCE: Duration = Duration::from_secs(60);

/// One simulated user.
pub(super) struct User {
    pub index: usize,
    pub base: String,
    pub rng: StdRng,
    pub answer_tokens: usize,
    pub start_at: Instant,
    /// No new session after this.
    pub end: Instant,
    /// Every question answered by this, or it is `unfinished`.
    pub deadline: Instant,
    pub slot: DropSlot,
    pub totals: Arc<Mutex<Totals>>,
}

/// What a user does with one question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Move {
    Ask,
    /// Cancel after a few chunks.
    AskThenCancel,
    /// The socket drops mid-answer; the client reconnects with `after_seq`.
    AskAndDrop,
    /// Ask for a new answer to the last question.
    Regenerate,
}

impl User {
    pub(super) async fn run(mut self) {
        tokio::time::sleep_until(self.start_at).await;
        let api = Api::new(self.base.clone());
        let mut session_number = 0;
        while Instant::now() < self.end {
            session_number += 1;
            self.one_session(&api, session_number).await;
        }
        if let Ok(mut slot) = self.slot.lock() {
            *slot = None;
        }
    }

    fn pick(&mut self, has_question: bool) -> Move {
        match self.rng.random_range(0..100) {
            0..10 => Move::AskThenCancel,
            10..20 => Move::AskAndDrop,
            20..30 if has_question => Move::Regenerate,
            _ => Move::Ask,
        }
    }

    async fn one_session(&mut self, api: &Api, number: u64) {
        let mut activity = Activity::default();
        let (session, token) = match self.create_session(api).await {
            Ok(created) => {
                // Counted at once: the samples bound the bucket's keys by it.
                self.count(|a| a.sessions += 1);
                created
            }
            Err(e) => {
                // Only a deadline ends the retries: the load is over.
                if Instant::now() < self.end {
                    self.add(activity, vec![unfinished_without_session(&e)]);
                }
                return;
            }
        };
        let mut client = ChatClient::new(&self.base, session, token, ClientOptions::default());
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(client.dropper());
        }
        let turns = self.rng.random_range(2..=4);
        let mut last_prompt: Option<String> = None;
        let mut cancelled = BTreeSet::new();
        let mut error = None;
        for turn in 0..turns {
            let think = Duration::from_millis(self.rng.random_range(500..3000));
            tokio::time::sleep(think).await;
            let step = self.pick(last_prompt.is_some());
            let prompt = match (&step, &last_prompt) {
                (Move::Regenerate, Some(p)) => p.clone(),
                _ => prompt(&mut self.rng, self.index, number, turn),
            };
            self.count(|a| a.questions += 1);
            let result = match step {
                Move::Ask => client.ask(&prompt, self.deadline).await,
                Move::AskThenCancel => {
                    let after = self.rng.random_range(1..6);
                    self.count(|a| a.cancels += 1);
                    let r = client.ask_then_cancel(&prompt, after, self.deadline).await;
                    if let Ok(id) = r {
                        cancelled.insert(id);
                    }
                    r
                }
                Move::AskAndDrop => {
                    let after = self.rng.random_range(1..8);
                    drop_after_chunks(&client, after);
                    self.count(|a| a.drops += 1);
                    client.ask(&prompt, self.deadline).await
                }
                Move::Regenerate => {
                    self.count(|a| a.regenerates += 1);
                    client.regenerate(&prompt, self.deadline).await
                }
            };
            if let Err(e) = result {
                error = Some(format!("{e:#}"));
                break;
            }
            last_prompt = Some(prompt);
        }
        if let Ok(mut slot) = self.slot.lock() {
            *slot = None;
        }
        let violations = audit(
            api,
            &mut client,
            error,
            &cancelled,
            self.answer_tokens,
            &mut activity,
        )
        .await;
        client.close().await;
        activity.reconnects = u64::from(client.log.reconnects);
        activity.replay_expired = u64::from(client.log.replay_expired);
        self.add(activity, violations);
    }

    /// `POST /api/sessions`, retried with backoff until the deadline; each
    /// request counted (one whose answer was lost may still have made a
    /// session: the bucket's keys are bounded by the requests).
    async fn create_session(&self, api: &Api) -> anyhow::Result<(protocol::SessionId, String)> {
        let mut backoff = crate::backoff::Backoff::new();
        loop {
            self.count(|a| a.session_requests += 1);
            match api.create_session().await {
                Ok(created) => return Ok(created),
                Err(_) if Instant::now() + backoff.peek() < self.deadline => {
                    backoff.wait().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Adds to the running totals at once (what the samples compare with).
    fn count(&self, add: impl FnOnce(&mut Activity)) {
        if let Ok(mut totals) = self.totals.lock() {
            add(&mut totals.activity);
        }
    }

    fn add(&self, activity: Activity, violations: Vec<Violation>) {
        if let Ok(mut totals) = self.totals.lock() {
            let t = &mut totals.activity;
            t.sessions += activity.sessions;
            t.questions += activity.questions;
            t.cancels += activity.cancels;
            t.regenerates += activity.regenerates;
            t.drops += activity.drops;
            t.reconnects += activity.reconnects;
            t.replay_expired += activity.replay_expired;
            t.events_checked += activity.events_checked;
            t.stale_events += activity.stale_events;
            for v in &violations {
                eprintln!("soak: VIOLATION {v}");
            }
            totals.violations.extend(violations);
        }
    }
}

/// Drops the client's socket once `after` more chunks arrived (or never,
/// if the answer is shorter): a network that fails mid-answer.
fn drop_after_chunks(client: &ChatClient, after: usize) {
    let mut progress = client.progress();
    let dropper = client.dropper();
    let target = progress.borrow().chunks + after;
    tokio::spawn(async move {
        let reached = tokio::time::timeout(
            Duration::from_secs(30),
            progress.wait_for(|p| p.chunks >= target),
        )
        .await;
        if matches!(reached, Ok(Ok(_))) {
            dropper.drop_socket();
        }
    });
}

/// A `drop` fault: the sockets of the users at `targets`.
pub(super) fn drop_sockets(slots: &[DropSlot], targets: &[usize]) {
    for i in targets {
        if let Some(Some(dropper)) = slots.get(*i).and_then(|s| s.lock().ok()).as_deref() {
            dropper.drop_socket();
        }
    }
}

fn unfinished_without_session(e: &anyhow::Error) -> Violation {
    Violation {
        kind: ViolationKind::Unfinished,
        session: protocol::SessionId::new(),
        message_id: None,
        detail: format!("no session could be created: {e:#}"),
    }
}

/// A varied prompt, so answers differ.
fn prompt(rng: &mut StdRng, user: usize, session: u64, turn: usize) -> String {
    const TOPICS: [&str; 6] = [
        "how a soak test finds leaks",
        "why retention bounds a stream",
        "what a key's TTL is for",
        "how a paused worker loses its lease",
        "why answers resume after a reconnect",
        "how to read a fitted slope",
    ];
    let topic = TOPICS[rng.random_range(0..TOPICS.len())];
    format!("User {user}, session {session}, turn {turn}: explain {topic}.")
}

/// Audits one session as `chatctl recovery` does: what the client received
/// against the stream (gaps, duplicates, order), and every answer against
/// the demo model's text; a cancelled answer may end in `cancelled`.
async fn audit(
    api: &Api,
    client: &mut ChatClient,
    error: Option<String>,
    cancelled: &BTreeSet<MessageId>,
    answer_tokens: usize,
    activity: &mut Activity,
) -> Vec<Violation> {
    let session = client.session();
    let mut violations = Vec::new();
    if let Some(error) = &error {
        violations.push(Violation {
            kind: ViolationKind::Unfinished,
            session,
            message_id: client
                .log
                .asked
                .iter()
                .find(|a| a.finished_at.is_none())
                .map(|a| a.message_id),
            detail: error.clone(),
        });
    }
    let deadline = Instant::now() + AUDIT_PATIENCE;
    let token = client.token().to_string();
    let truth = match api.events_until(session, &token, deadline).await {
        Ok(truth) => truth,
        Err(e) => {
            violations.push(Violation {
                kind: ViolationKind::Unverifiable,
                session,
                message_id: None,
                detail: format!("{e:#}"),
            });
            return violations;
        }
    };
    if error.is_none() {
        if let Some(last) = truth.last() {
            let catch_up = Instant::now() + Duration::from_secs(10);
            if let Err(e) = client.catch_up(last.seq, catch_up).await {
                violations.push(Violation {
                    kind: ViolationKind::Gap,
                    session,
                    message_id: None,
                    detail: format!("could not catch up with the stream: {e:#}"),
                });
            }
        }
    }
    activity.events_checked += truth.len() as u64;
    activity.stale_events += verify::stale_events(&truth) as u64;
    violations.extend(verify::check_stream(session, &truth, &client.log.events()));
    let expected: Vec<ExpectedAnswer> = client
        .log
        .asked
        .iter()
        .filter(|a| error.is_none() || a.finished_at.is_some())
        .map(|a| ExpectedAnswer {
            message_id: a.message_id,
            text: worker::backends::demo::answer(&a.prompt, answer_tokens),
        })
        .collect();
    let ended_cancelled = ended_in_cancelled(&truth);
    violations.extend(
        verify::check_answers(session, &truth, &expected)
            .into_iter()
            // A cancelled answer ends in `cancelled`: that is what was asked.
            .filter(|v| {
                !(v.kind == ViolationKind::FailedAnswer
                    && v.message_id
                        .is_some_and(|id| cancelled.contains(&id) && ended_cancelled.contains(&id)))
            }),
    );
    violations
}

/// The messages whose first terminal event, as a client acts on it, is
/// `cancelled`.
fn ended_in_cancelled(truth: &[protocol::frames::SequencedEvent]) -> BTreeSet<MessageId> {
    let mut by_message: std::collections::BTreeMap<MessageId, Vec<_>> = Default::default();
    for e in truth {
        if let Some(id) = e.event.message_id() {
            by_message.entry(id).or_default().push(e);
        }
    }
    by_message
        .into_iter()
        .filter(|(_, events)| {
            let (acted, _) = verify::as_a_client_acts_on(events);
            acted
                .iter()
                .find(|e| e.event.is_terminal())
                .is_some_and(|e| matches!(e.event, Event::Cancelled { .. }))
        })
        .map(|(id, _)| id)
        .collect()
}
