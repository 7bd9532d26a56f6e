//! The AI SDK's endpoints (`/api/ui/chat…`): the UI message stream over SSE,
//! its resume from the answer's `start`, who is refused, and CORS. The real
//! SDK drives the same endpoints through Nginx in `web/e2e/ai-sdk.e2e.mjs`.

mod support;

use protocol::ErrorCode;
use serde_json::{json, Value};
use support::sse::{chat_body, listed_messages, read_chunks, read_sse, text_of, Ending};
use support::{answer, assert_rest_error, eventually, Script, TestApp};

#[tokio::test]
async fn an_sse_answer_streams_and_a_resume_replays_it_from_its_start_once() {
    let app = TestApp::builder()
        .real_worker_with(&[
            "--demo-tokens-per-sec",
            "40",
            "--demo-answer-tokens",
            "60",
            "--demo-reasoning-tokens",
            "5",
        ])
        .start()
        .await;
    let (session, token) = app.new_session().await;

    let posted = app
        .post("/api/ui/chat", &token, chat_body(session, "hello"))
        .await;
    assert_eq!(posted.status(), 200);
    let headers = posted.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["x-vercel-ai-ui-message-stream"], "v1");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert_eq!(headers["cache-control"], "no-cache");
    let message_id = headers["x-resumable-stream-id"]
        .to_str()
        .unwrap()
        .to_string();
    // The page goes away after a few chunks: the answer goes on.
    let early = read_chunks(posted, Some(5)).await;
    assert_eq!(early[0], json!({"type": "start", "messageId": message_id}));
    assert_eq!(early[1], json!({"type": "start-step"}));
    assert_eq!(
        early[2],
        json!({"type": "reasoning-start", "id": "reasoning"})
    );

    let resumed = app
        .get(&format!("/api/ui/chat/{session}/stream"), &token)
        .await;
    assert_eq!(resumed.status(), 200);
    let chunks = read_chunks(resumed, None).await;
    assert_eq!(
        chunks[0]["messageId"],
        message_id.as_str(),
        "from its start"
    );
    let types: Vec<&str> = chunks.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types.iter().filter(|t| **t == "text-start").count(), 1);
    assert_eq!(
        types[types.len() - 3..],
        ["text-end", "finish-step", "finish"]
    );
    let stored = app.all_events(session, &token).await;
    assert_eq!(
        text_of(&chunks),
        answer(&stored, message_id.parse().unwrap()),
        "the whole answer once"
    );

    // Nothing in flight now: 204, and the turn is listed.
    let idle = app
        .get(&format!("/api/ui/chat/{session}/stream"), &token)
        .await;
    assert_eq!(idle.status(), 204);
    let listed = listed_messages(&app, session, &token).await;
    assert_eq!(listed[0]["role"], "user");
    assert_eq!(listed[0]["parts"][0]["text"], "hello");
    assert_eq!(listed[1]["id"], message_id.as_str());
    assert_eq!(listed[1]["parts"][0]["text"], text_of(&chunks).as_str());
}

#[tokio::test]
async fn stop_cancels_the_answer_and_its_stream_ends_with_abort() {
    let app = TestApp::builder()
        .real_worker_with(&["--demo-tokens-per-sec", "50", "--demo-answer-tokens", "500"])
        .start()
        .await;
    let (session, token) = app.new_session().await;
    let posted = app
        .post("/api/ui/chat", &token, chat_body(session, "go on"))
        .await;
    let reading = tokio::spawn(read_chunks(posted, None));
    support::eventually("the answer to stream", || async {
        let events = app.all_events(session, &token).await;
        events
            .iter()
            .any(|e| e.event.kind() == protocol::EventKind::Chunk)
    })
    .await;
    let stopped = app
        .post(&format!("/api/ui/chat/{session}/stop"), &token, json!({}))
        .await;
    assert_eq!(stopped.status(), 202);
    let chunks = reading.await.unwrap();
    assert_eq!(chunks.last().unwrap(), &json!({"type": "abort"}));
    let turns = app.history(session, &token).await;
    assert_eq!(turns[0].status, protocol::records::TurnStatus::Cancelled);
    assert_eq!(
        turns[0].assistant,
        text_of(&chunks),
        "what was stored, once"
    );
}

/// The relay runs inside the answer's body: a reader that leaves takes its
/// place on the session with it, and a gateway that shuts down breaks the
/// stream off (the client resumes elsewhere) rather than ending it cleanly.
#[tokio::test]
async fn a_reader_that_leaves_frees_its_place_and_a_shutdown_breaks_the_stream_off() {
    let mut app = TestApp::builder()
        .gateway_args(&["--max-sockets-per-session", "1"])
        .real_worker_with(&["--demo-tokens-per-sec", "50", "--demo-answer-tokens", "500"])
        .start()
        .await;
    let (session, token) = app.new_session().await;
    let stream_path = format!("/api/ui/chat/{session}/stream");
    let posted = app
        .post("/api/ui/chat", &token, chat_body(session, "go on"))
        .await;
    assert_eq!(posted.status(), 200);
    // While it is read, the session's one place is taken.
    let busy = app.get(&stream_path, &token).await;
    assert_rest_error(busy, 429, ErrorCode::RateLimited).await;
    let (early, ending) = read_sse(posted, Some(6)).await;
    assert_eq!(ending, Ending::Enough);
    assert_eq!(early[0]["type"], "start");

    // The reader left (the response is dropped): the place is free again.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let resumed = loop {
        let response = app.get(&stream_path, &token).await;
        if response.status() == 200 {
            break response;
        }
        assert_eq!(response.status(), 429, "{}", response.url());
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader that left still holds its place"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    let reading = tokio::spawn(read_sse(resumed, None));
    support::eventually("more of the answer", || async {
        app.all_events(session, &token).await.len() > 20
    })
    .await;
    app.shutdown_gateway().await;
    let (chunks, ending) = reading.await.unwrap();
    assert_eq!(
        ending,
        Ending::Broken,
        "no [DONE] for an answer still running"
    );
    assert_eq!(chunks[0]["type"], "start", "the resume began at the start");
    assert!(
        chunks
            .iter()
            .all(|c| !matches!(c["type"].as_str(), Some("finish" | "abort" | "error"))),
        "{chunks:?}"
    );
}

#[tokio::test]
async fn strangers_are_refused_and_cors_answers_only_listed_origins() {
    let app = TestApp::builder()
        .gateway_args(&["--cors-origins", "http://app.example"])
        .scripted_worker(Script::words(&["hi"]))
        .start()
        .await;
    let (session, token) = app.new_session().await;
    let (other, _) = app.new_session().await;
    let http = reqwest::Client::new();

    // No token, a wrong one, another session's: 401 everywhere.
    let bare = http
        .post(app.url("/api/ui/chat"))
        .json(&chat_body(session, "hi"))
        .send()
        .await
        .unwrap();
    assert_rest_error(bare, 401, ErrorCode::Unauthorized).await;
    let wrong = app
        .post("/api/ui/chat", "nope", chat_body(session, "hi"))
        .await;
    assert_rest_error(wrong, 401, ErrorCode::Unauthorized).await;
    let foreign = app
        .post("/api/ui/chat", &token, chat_body(other, "hi"))
        .await;
    assert_rest_error(foreign, 401, ErrorCode::Unauthorized).await;
    for path in ["stream", "messages"] {
        let response = app
            .get(&format!("/api/ui/chat/{other}/{path}"), &token)
            .await;
        assert_rest_error(response, 401, ErrorCode::Unauthorized).await;
    }
    let stop = app
        .post(&format!("/api/ui/chat/{other}/stop"), &token, json!({}))
        .await;
    assert_rest_error(stop, 401, ErrorCode::Unauthorized).await;
    // A chat id that is not a session id, an unknown trigger, no question.
    let odd = app
        .post("/api/ui/chat", &token, chat_body("chat-1", "hi"))
        .await;
    assert_rest_error(odd, 400, ErrorCode::BadRequest).await;
    let mut rewind = chat_body(session, "hi");
    rewind["trigger"] = json!("rewind");
    let rewind = app.post("/api/ui/chat", &token, rewind).await;
    assert_rest_error(rewind, 400, ErrorCode::BadRequest).await;
    let regenerate = app
        .post(
            "/api/ui/chat",
            &token,
            json!({"id": session.to_string(), "trigger": "regenerate-message", "messages": []}),
        )
        .await;
    assert_rest_error(regenerate, 404, ErrorCode::NotFound).await;

    let preflight = |origin: &'static str| {
        http.request(
            reqwest::Method::OPTIONS,
            app.url(&format!("/api/ui/chat/{session}/stream")),
        )
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
    };
    let listed = preflight("http://app.example").await.unwrap();
    assert_eq!(
        listed.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let elsewhere = preflight("http://elsewhere.example").await.unwrap();
    assert!(elsewhere
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[tokio::test]
async fn a_whole_conversation_is_posted_within_the_chat_s_own_body_limit() {
    let app = TestApp::builder()
        .gateway_args(&[
            "--max-body-bytes",
            "16384",
            "--ui-chat-max-body-bytes",
            "262144",
        ])
        .real_worker_with(&["--demo-tokens-per-sec", "200", "--demo-answer-tokens", "5"])
        .start()
        .await;
    let (session, token) = app.new_session().await;
    // A stock client posts every earlier turn with the question: here about
    // 120 KB of them, past the REST limit, within the chat's own.
    let with_history = |turns: usize| {
        let said = "x".repeat(1_000);
        let mut body = chat_body(session, "and now?");
        let mut messages: Vec<Value> = (0..turns)
            .flat_map(|i| {
                [
                    json!({"id": format!("u{i}"), "role": "user", "parts": [{"type": "text", "text": said}]}),
                    json!({"id": format!("a{i}"), "role": "assistant", "parts": [{"type": "text", "text": said}]}),
                ]
            })
            .collect();
        messages.extend(body["messages"].as_array().unwrap().iter().cloned());
        body["messages"] = Value::Array(messages);
        body
    };
    let posted = app.post("/api/ui/chat", &token, with_history(60)).await;
    assert_eq!(posted.status(), 200);
    let chunks = read_chunks(posted, None).await;
    assert_eq!(chunks.last().unwrap()["type"], "finish");
    // The turn is listed once its history is stored: the question asked
    // was the last user message.
    let listed_question = || async {
        listed_messages(&app, session, &token).await[0]["parts"][0]["text"] == "and now?"
    };
    eventually("the turn listed with its question", listed_question).await;

    // Past the chat's own limit: 413, as any body too large.
    let oversized = app.post("/api/ui/chat", &token, with_history(150)).await;
    assert_rest_error(oversized, 413, ErrorCode::TooLarge).await;
    // The REST endpoints keep theirs.
    let rest = app
        .http
        .post(app.url(&format!("/api/chat?session={session}")))
        .bearer_auth(&token)
        .json(&json!({"content": "y".repeat(20_000)}))
        .send()
        .await
        .unwrap();
    assert_rest_error(rest, 413, ErrorCode::TooLarge).await;
}
