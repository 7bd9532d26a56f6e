//! Only a session's token opens it: REST answers 401/404/400 with a JSON
//! error, a socket gets an error frame and a policy close, and neither
//! ever sees the session's events.

mod support;

use protocol::frames::{ControlFrame, ServerFrame};
use protocol::{CloseCode, ErrorCode, MessageId, SessionId};
use serde_json::json;
use support::{assert_rest_error, Received, Script, TestApp, Ws};

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_and_never_sees_events() {
    let script = Script::words(&["private ", "answer"]);
    let app = TestApp::builder().scripted_worker(script).start().await;
    let (session, token) = app.new_session().await;
    let (_, other_token) = app.new_session().await;
    let wrong = "0".repeat(64);

    // REST: wrong, missing and another session's tokens; unknown session; bad id.
    for (post, path) in [
        (true, "/api/chat"),
        (true, "/api/cancel"),
        (false, "/api/history"),
        (false, "/api/events"),
    ] {
        let url = app.url(&format!("{path}?session={session}"));
        let body = json!({"content": "hi", "message_id": MessageId::new()});
        for auth in [Some(wrong.as_str()), Some(other_token.as_str()), None] {
            let mut request = match post {
                true => app.http.post(&url).json(&body),
                false => app.http.get(&url),
            };
            if let Some(auth) = auth {
                request = request.bearer_auth(auth);
            }
            let response = request.send().await.unwrap();
            assert_rest_error(response, 401, ErrorCode::Unauthorized).await;
        }
        // GET on a POST route is 405; check the GETs only.
        if !post {
            let unknown = format!("{path}?session={}", SessionId::new());
            let response = app.get(&unknown, &token).await;
            assert_rest_error(response, 404, ErrorCode::NotFound).await;
            let response = app.get(&format!("{path}?session=not-a-uuid"), &token).await;
            assert_rest_error(response, 400, ErrorCode::BadRequest).await;
        }
    }

    // WebSocket: the owner chats while intruders knock.
    let mut owner = app.connect(session, &token, None).await;
    owner.ready().await;
    let mut intruders = Vec::new();
    for query in [
        format!("?session={session}&token={wrong}"),
        format!("?session={session}&token={other_token}"),
        format!("?session={session}"),
        format!("?session={session}&token="),
        format!("?session={}&token={token}", SessionId::new()),
        format!("?session=nope&token={token}"),
    ] {
        intruders.push((query.clone(), Ws::connect(&app.ws_url(&query)).await));
    }
    let (id, _) = owner.chat("a secret question").await;
    owner.until_terminal(id).await;
    for (query, mut ws) in intruders {
        let mut saw_error = false;
        loop {
            match ws.recv().await {
                Received::Frame(ServerFrame::Control(ControlFrame::Error { code, .. })) => {
                    assert!(
                        matches!(
                            code,
                            ErrorCode::Unauthorized | ErrorCode::NotFound | ErrorCode::BadRequest
                        ),
                        "{query}: {code:?}"
                    );
                    saw_error = true;
                }
                Received::Frame(other) => panic!("{query}: an intruder got {other:?}"),
                Received::Closed(code) => {
                    assert_eq!(code, Some(CloseCode::PolicyViolation.code()), "{query}");
                    break;
                }
            }
        }
        assert!(saw_error, "{query}: an error frame before the close");
    }
}
