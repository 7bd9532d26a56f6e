//! The endings table: each ending's terminal event, history turn, reply
//! to the work-queue and outcome; what they carry; dead letters; retry delays.

use protocol::EventKind;

use super::*;

const MAX_DELIVER: i64 = 3;

fn attempt(number: u32) -> Attempt {
    Attempt {
        message_id: "7d3f0a3e-3c1b-4d55-9a43-2f4b52c1a0de".parse().unwrap(),
        number,
        max_deliver: MAX_DELIVER,
    }
}

fn after(stop: Stop, number: u32) -> Ending {
    let generated = Generated {
        stop,
        text: "partial answer".into(),
        chunks: 4,
        tokens: 9,
        reasoning: 2,
        reasoning_chars: 30,
    };
    Ending::after_generation(generated, attempt(number))
}

fn unavailable(retry_after: Option<Duration>) -> Stop {
    Stop::Backend(BackendError::Unavailable {
        message: "503".into(),
        retry_after,
    })
}

/// One row of the endings table: what a reader checks for each ending.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    terminal: Option<EventKind>,
    turn: Option<TurnStatus>,
    ack: QueueReply,
    cancel_flag: CancelFlag,
    outcome: Option<Outcome>,
    outstanding: Outstanding,
    free_slot_early: bool,
    dead_letter: bool,
    hold_until_writable: bool,
}

impl From<&Ending> for Row {
    fn from(ending: &Ending) -> Self {
        Row {
            terminal: ending.terminal.as_ref().map(Event::kind),
            turn: ending.turn.as_ref().map(|t| t.status),
            ack: ending.ack,
            cancel_flag: ending.cancel_flag,
            outcome: ending.report.outcome,
            outstanding: ending.outstanding,
            free_slot_early: ending.free_slot_early,
            dead_letter: ending.dead_letter.is_some(),
            hold_until_writable: ending.hold_until_writable,
        }
    }
}

/// An ending that closes the answer after chunks were published.
fn closes(terminal: EventKind, turn: TurnStatus, ack: QueueReply, outcome: Outcome) -> Row {
    Row {
        terminal: Some(terminal),
        turn: Some(turn),
        ack,
        cancel_flag: CancelFlag::Keep,
        outcome: Some(outcome),
        outstanding: Outstanding::MustBeStored,
        free_slot_early: true,
        dead_letter: false,
        hold_until_writable: false,
    }
}

/// An ending that stores nothing.
fn quiet(ack: QueueReply, outcome: Option<Outcome>) -> Row {
    Row {
        terminal: None,
        turn: None,
        ack,
        cancel_flag: CancelFlag::Keep,
        outcome,
        outstanding: Outstanding::Abandon,
        free_slot_early: false,
        dead_letter: false,
        hold_until_writable: false,
    }
}

/// Each ending, named by its log line's `detail`, against what it does.
#[test]
fn every_ending_maps_to_its_event_turn_ack_and_outcome() {
    use EventKind as E;
    use QueueReply::{Ack, Leave, Nak, Term};
    use TurnStatus as T;
    let before_start = |row: Row| Row {
        free_slot_early: false,
        ..row
    };
    let table = [
        (
            "already answered",
            Ending::already_answered(),
            quiet(Ack, None),
        ),
        (
            "answer already stored",
            Ending::answer_already_stored(Answer::unfinished(T::Done, "stored".into())),
            Row {
                turn: Some(T::Done),
                ..quiet(Ack, None)
            },
        ),
        (
            "answer already stored",
            Ending::answer_already_stored(Answer::unfinished(T::Cancelled, String::new())),
            Row {
                turn: Some(T::Cancelled),
                cancel_flag: CancelFlag::Clear,
                ..quiet(Ack, None)
            },
        ),
        (
            "cancelled before start",
            Ending::cancelled_before_start(attempt(1)),
            Row {
                cancel_flag: CancelFlag::Clear,
                ..before_start(closes(E::Cancelled, T::Cancelled, Ack, Outcome::Cancelled))
            },
        ),
        (
            "unknown model",
            Ending::unknown_model(attempt(1), "gpt-9"),
            before_start(closes(E::Error, T::Failed, Term, Outcome::Failed)),
        ),
        (
            "answered",
            after(
                Stop::Finished {
                    finish_reason: FinishReason::Stop,
                    usage: None,
                },
                1,
            ),
            Row {
                cancel_flag: CancelFlag::ClearIfCancelled,
                ..closes(E::Done, T::Done, Ack, Outcome::Done)
            },
        ),
        (
            "cancelled while generating",
            after(Stop::Cancelled, 1),
            Row {
                cancel_flag: CancelFlag::Clear,
                ..closes(E::Cancelled, T::Cancelled, Ack, Outcome::Cancelled)
            },
        ),
        (
            "model refused",
            after(Stop::Backend(BackendError::Rejected("no".into())), 1),
            closes(E::Error, T::Failed, Term, Outcome::Failed),
        ),
        (
            "model unavailable",
            after(unavailable(None), 2),
            Row {
                outstanding: Outstanding::Settle,
                ..quiet(
                    Nak(Some(Duration::from_secs(1))),
                    Some(Outcome::Redelivered),
                )
            },
        ),
        (
            "retries exhausted",
            after(unavailable(None), 3),
            Row {
                outstanding: Outstanding::Settle,
                free_slot_early: false,
                dead_letter: true,
                ..closes(E::Error, T::Failed, Term, Outcome::DeadLettered)
            },
        ),
        (
            "publish failed",
            after(Stop::Publish(PublishFailed("gone".into())), 3),
            Row {
                // Not handed back while the stream has no leader: the
                // job would use up its deliveries during an election.
                // Then a short pause, whatever the attempt: NATS failed,
                // not the job.
                hold_until_writable: true,
                ..quiet(
                    Nak(Some(Duration::from_millis(250))),
                    Some(Outcome::Redelivered),
                )
            },
        ),
        (
            "shutdown",
            after(Stop::Aborted, 1),
            quiet(Nak(None), Some(Outcome::Redelivered)),
        ),
        (
            "taken over by another worker",
            after(Stop::Superseded, 1),
            quiet(Leave, None),
        ),
    ];
    for (name, ending, expected) in table {
        assert_eq!(Row::from(&ending), expected, "{name}");
        assert_eq!(ending.report.detail, name);
    }
}

#[test]
fn the_events_and_turns_carry_what_the_attempt_produced() {
    let done = after(
        Stop::Finished {
            finish_reason: FinishReason::Length,
            usage: None,
        },
        2,
    );
    assert!(matches!(
        done.terminal,
        Some(Event::Done {
            attempt: 2,
            finish_reason: FinishReason::Length,
            ..
        })
    ));
    let turn = done.turn.unwrap();
    assert_eq!(turn.text, "partial answer");
    assert_eq!(
        turn.reasoning_chars, 30,
        "the turn counts the reasoning, apart"
    );
    assert_eq!(turn.finish_reason, Some(FinishReason::Length));
    assert_eq!((done.report.chunks, done.report.tokens), (4, 9));

    let refused = after(Stop::Backend(BackendError::Rejected("bad model".into())), 1);
    assert!(
        matches!(
            refused.terminal,
            Some(Event::Error { code: ErrorCode::ModelFailed, ref message, .. }) if message == MODEL_REFUSED
        ),
        "the user gets a plain message, never the server's words"
    );
    assert_eq!(refused.turn.unwrap().text, "partial answer");

    let unknown = Ending::unknown_model(attempt(1), "gpt-9");
    assert!(matches!(
        unknown.terminal,
        Some(Event::Error { code: ErrorCode::BadRequest, ref message, .. }) if message.contains("gpt-9")
    ));
    assert_eq!(unknown.turn.unwrap().text, "", "nothing was generated");
}

#[test]
fn the_last_delivery_dead_letters_with_the_reason_and_no_text() {
    let last = after(unavailable(None), 3);
    assert!(matches!(
        last.terminal,
        Some(Event::Error {
            code: ErrorCode::RetriesExhausted,
            ..
        })
    ));
    assert!(last.dead_letter.unwrap().contains("3 attempts: 503"));
    assert_eq!(last.turn.unwrap().text, "");
    let told = after(unavailable(Some(Duration::from_secs(7))), 1);
    assert_eq!(
        told.ack,
        QueueReply::Nak(Some(Duration::from_secs(7))),
        "a backend's retry-after wins over our own delay"
    );
}

#[test]
fn the_retry_delay_doubles_from_half_a_second_up_to_thirty() {
    let delays: Vec<_> = [1, 2, 3, 7, 8, 50]
        .map(|n| attempt(n).retry_delay().as_millis())
        .into();
    assert_eq!(delays, [500, 1000, 2000, 30_000, 30_000, 30_000]);
}
