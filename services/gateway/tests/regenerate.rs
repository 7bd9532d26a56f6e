//! Regenerate: a new message with its own id that asks the session's last
//! question again and names the message it replaces. Every tab and every
//! replay sees it; the history keeps both turns; only the session's last,
//! finished question is replaced; the in-flight limit and idempotency are
//! those of a chat.

mod support;

use protocol::records::ActiveMessage;
use protocol::{sessions, subjects, ErrorCode, Event, EventKind, MessageId, SessionId};
use serde_json::{json, Value};
use support::{answer, assert_rest_error, count, eventually, TestApp, ANSWER_TOKENS};

fn regenerate_path(session: SessionId) -> String {
    format!("/api/regenerate?session={session}")
}

#[tokio::test]
async fn a_regenerate_answers_the_last_question_again_and_every_tab_sees_it() {
    let app = TestApp::builder().real_worker().start().await;
    let (session, token, mut ws) = app.attach().await;
    let mut other_tab = app.connect(session, &token, None).await;
    other_tab.ready().await;
    let prompt = "Why is the sky blue?";
    let question = ws.answered(prompt).await;
    other_tab.until_terminal(question).await;

    // Sent the moment `done` arrives, while the worker records the turn.
    let (again, seq) = ws.regenerate(None).await;
    let events = ws.until_terminal(again).await;
    assert_eq!(events[0].seq, seq, "accepted carries the echo's seq");
    assert_eq!(
        events[0].event,
        Event::UserMessage {
            message_id: again,
            content: prompt.into(),
            replaces: Some(question),
        }
    );
    assert_eq!(events.last().unwrap().event.kind(), EventKind::Done);
    let expected = worker::backends::demo::answer(prompt, ANSWER_TOKENS);
    assert_eq!(answer(&events, again), expected);
    assert_eq!(other_tab.until_terminal(again).await, events);

    // The history keeps both turns; the later one names the earlier.
    eventually("both turns in the history", || async {
        app.history(session, &token).await.len() == 2
    })
    .await;
    let turns = app.history(session, &token).await;
    assert_eq!((turns[0].message_id, turns[0].replaces), (question, None));
    assert_eq!(
        (turns[1].message_id, turns[1].replaces),
        (again, Some(question))
    );
    assert!(turns.iter().all(|t| t.user == prompt));
    // A replay holds it like any question.
    let (stored, _) = app.events(session, &token, 0).await;
    assert!(stored.contains(&events[0]));
    // An ordinary question's echo has no `replaces` at all: old clients
    // see a plain question.
    let (plain, _) = app.events(session, &token, 0).await;
    let first_echo = serde_json::to_value(&plain[0]).unwrap();
    assert!(first_echo.get("replaces").is_none(), "{first_echo}");

    // The regeneration is now the last question: the next one replaces it.
    let (third, _) = ws.regenerate(Some(again)).await;
    let events = ws.until_terminal(third).await;
    assert!(matches!(
        events[0].event,
        Event::UserMessage { replaces: Some(r), .. } if r == again
    ));
}

#[tokio::test]
async fn a_regenerate_over_rest_is_queued_once_per_message_id() {
    let app = TestApp::builder().real_worker().start().await;
    let (session, token, mut ws) = app.attach().await;
    let question = ws.answered("What is a monad?").await;

    let id = MessageId::new();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let body = json!({"message_id": id, "replaces": question});
        let response = app.post(&regenerate_path(session), &token, body).await;
        assert_eq!(response.status(), 202);
        answers.push(response.json::<Value>().await.unwrap());
    }
    assert_eq!(answers[0], answers[1], "a retry gets the same seq");
    assert_eq!(answers[0]["message_id"], json!(id));
    ws.until_terminal(id).await;
    // Retried once more after its answer: still the same seq, nothing new.
    let body = json!({"message_id": id});
    let response = app.post(&regenerate_path(session), &token, body).await;
    assert_eq!(response.json::<Value>().await.unwrap(), answers[0]);
    let (events, _) = app.events(session, &token, 0).await;
    let of_id: Vec<_> = events
        .into_iter()
        .filter(|e| e.event.message_id() == Some(id))
        .collect();
    assert_eq!(count(&of_id, EventKind::UserMessage), 1);
    assert_eq!(count(&of_id, EventKind::Done), 1);
    assert_eq!(of_id[0].seq, answers[0]["seq"].as_u64().unwrap());

    // Every field is optional: `{}` regenerates the last question.
    let response = app.post(&regenerate_path(session), &token, json!({})).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let newest: MessageId = serde_json::from_value(body["message_id"].clone()).unwrap();
    let events = ws.until_terminal(newest).await;
    assert!(matches!(
        events[0].event,
        Event::UserMessage { replaces: Some(r), .. } if r == id
    ));
}

#[tokio::test]
async fn only_the_sessions_own_last_finished_question_is_replaced() {
    let app = TestApp::builder().real_worker().start().await;
    let (session, token, mut ws) = app.attach().await;
    let path = regenerate_path(session);

    let wrong = "0".repeat(64);
    assert_rest_error(
        app.post(&path, &wrong, json!({})).await,
        401,
        ErrorCode::Unauthorized,
    )
    .await;
    // Nothing asked yet.
    assert_rest_error(
        app.post(&path, &token, json!({})).await,
        404,
        ErrorCode::NotFound,
    )
    .await;
    let id = MessageId::new();
    ws.send_json(json!({"type": "regenerate", "message_id": id}))
        .await;
    ws.expect_error(ErrorCode::NotFound).await;

    let first = ws.answered("first").await;
    let last = ws.answered("second").await;
    let refusals = [
        (json!({"replaces": first}), 400, ErrorCode::BadRequest),
        (
            json!({"replaces": MessageId::new()}),
            404,
            ErrorCode::NotFound,
        ),
        (json!({"message_id": last}), 400, ErrorCode::BadRequest),
        (
            json!({"message_id": "not-a-uuid"}),
            400,
            ErrorCode::BadRequest,
        ),
        (
            json!({"content": "a new question"}),
            400,
            ErrorCode::BadRequest,
        ),
        (
            json!({"model": "no-such-model"}),
            400,
            ErrorCode::BadRequest,
        ),
    ];
    for (body, status, code) in refusals {
        assert_rest_error(app.post(&path, &token, body).await, status, code).await;
    }
    // The same refusal over the socket names the frame's message id.
    let id = MessageId::new();
    ws.send_json(json!({"type": "regenerate", "message_id": id, "replaces": first}))
        .await;
    match ws.control().await {
        protocol::frames::ControlFrame::Error {
            message_id, code, ..
        } => assert_eq!((message_id, code), (Some(id), ErrorCode::BadRequest)),
        other => panic!("expected an error, got {other:?}"),
    }

    // Another session's last question is unknown here, and that session
    // is left as it was.
    let (theirs_session, theirs_token, mut theirs_ws) = app.attach().await;
    let theirs = theirs_ws.answered("theirs").await;
    let (before, _) = app.events(theirs_session, &theirs_token, 0).await;
    let body = json!({"replaces": theirs});
    assert_rest_error(
        app.post(&path, &token, body).await,
        404,
        ErrorCode::NotFound,
    )
    .await;
    // Nor does their token open this session.
    let body = json!({"replaces": last});
    assert_rest_error(
        app.post(&path, &theirs_token, body).await,
        401,
        ErrorCode::Unauthorized,
    )
    .await;
    let (after, _) = app.events(theirs_session, &theirs_token, 0).await;
    assert_eq!(after, before);
    let (mine, _) = app.events(session, &token, 0).await;
    assert_eq!(
        count(&mine, EventKind::UserMessage),
        2,
        "nothing was stored"
    );

    // The refusals changed nothing: the last question is still replaceable.
    let (again, _) = ws.regenerate(Some(last)).await;
    ws.until_terminal(again).await;
}

#[tokio::test]
async fn a_question_still_being_answered_is_not_regenerated() {
    let app = TestApp::start().await; // no worker: the answer never ends
    let (session, token, mut ws) = app.attach().await;
    let (question, _) = ws.chat("still running").await;
    let id = MessageId::new();
    ws.send_json(json!({"type": "regenerate", "message_id": id}))
        .await;
    ws.expect_error(ErrorCode::BadRequest).await;
    let body = json!({"replaces": question});
    let response = app.post(&regenerate_path(session), &token, body).await;
    assert_rest_error(response, 400, ErrorCode::BadRequest).await;
    assert_eq!(app.queued_jobs().await, 1, "only the question is queued");
}

#[tokio::test]
async fn a_regenerate_counts_against_the_in_flight_limit() {
    let app = TestApp::builder()
        .gateway_args(&["--max-in-flight-per-session", "1"])
        .real_worker()
        .start()
        .await;
    let (session, token, mut ws) = app.attach().await;
    ws.answered("a question").await;
    // Another answer of the session still running (an earlier question of
    // another tab whose job is slow) holds the one slot.
    let js = app.js().await;
    let kv = js.get_key_value(subjects::SESSIONS_BUCKET).await.unwrap();
    let other = MessageId::new();
    sessions::update(&kv, session, |r| {
        r.active.push(ActiveMessage {
            message_id: other,
            accepted_at_ms: protocol::now_ms(),
            ending: false,
            extra: Default::default(),
        });
        Ok::<_, ()>(true)
    })
    .await
    .unwrap()
    .unwrap();
    ws.send_json(json!({"type": "regenerate"})).await;
    ws.expect_error(ErrorCode::RateLimited).await;
    let response = app.post(&regenerate_path(session), &token, json!({})).await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_rest_error(response, 429, ErrorCode::RateLimited).await;

    // Once that answer is over, the regenerate goes through.
    sessions::update(&kv, session, |r| Ok::<_, ()>(r.finish(other)))
        .await
        .unwrap()
        .unwrap();
    let (again, _) = ws.regenerate(None).await;
    let events = ws.until_terminal(again).await;
    assert_eq!(events.last().unwrap().event.kind(), EventKind::Done);
}
