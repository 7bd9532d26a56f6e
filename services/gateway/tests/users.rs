//! `GATEWAY_AUTH=jwt`: sessions owned by the token's user. Another user
//! gets `not_found` on every endpoint and frame, a bad token the one
//! uniform 401; the list is the caller's, paged; quotas hold per user
//! across gateways; every device of a user streams, cancels and
//! regenerates the same session. (Tokens over time: `users_tokens.rs`.)

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod support;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use protocol::users::SessionChange;
use protocol::{CloseCode, ErrorCode, EventKind, MessageId, SessionId};
use serde_json::{json, Value};
use support::login::{
    another_gateway, create, list, list_change, new_session, new_session_on, one_gateway, socket,
    two_gateways, Login,
};
use support::{assert_rest_error, count, TestApp, Ws, WAIT};

#[tokio::test]
async fn another_user_gets_not_found_and_a_bad_token_the_uniform_401() {
    let login = Login::new();
    let app = one_gateway(&login).await;
    let alice = Login::token("alice", 600);
    let bob = Login::token("bob", 600);
    let session = new_session(&app, &alice).await;
    let q = format!("?session={session}");
    let message = MessageId::new();

    // Every endpoint of the session, as bob: the answer to an unknown session.
    let calls: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            format!("/api/chat{q}"),
            Some(json!({"content": "hi"})),
        ),
        ("POST", format!("/api/regenerate{q}"), Some(json!({}))),
        (
            "POST",
            format!("/api/cancel{q}"),
            Some(json!({"message_id": message})),
        ),
        ("GET", format!("/api/history{q}"), None),
        ("GET", format!("/api/events{q}"), None),
        (
            "PATCH",
            format!("/api/sessions/{session}"),
            Some(json!({"title": "mine"})),
        ),
        ("DELETE", format!("/api/sessions/{session}"), None),
    ];
    let call = |method: &str, path: &str, token: &str, body: &Option<Value>| {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = app.http.request(method, app.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send()
    };
    for (method, path, body) in &calls {
        let response = call(method, path, &bob, body).await.unwrap();
        assert_rest_error(response, 404, ErrorCode::NotFound).await;
    }
    // A forged, an expired, a revoked-looking and no token: one 401, one body.
    let forged = {
        let key = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!").unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "alice", "exp": now + 600}),
            &key,
        )
        .unwrap()
    };
    let expired = Login::token_with(json!({"sub": "alice", "exp": 1_000_000}));
    let mut bodies = Vec::new();
    for token in [forged.as_str(), expired.as_str(), "", "not-a-jwt"] {
        for (method, path, body) in
            calls
                .iter()
                .chain([&("GET", "/api/sessions".to_string(), None)])
        {
            let response = call(method, path, token, body).await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path}");
            bodies.push(response.text().await.unwrap());
        }
        let response = create(&app, app.addr, token).await;
        assert_eq!(response.status(), 401);
        bodies.push(response.text().await.unwrap());
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "one answer for every refusal: {bodies:?}");

    // On the socket: bob's auth frame on alice's session, and a forged token.
    for (token, code) in [
        (&bob, ErrorCode::NotFound),
        (&forged, ErrorCode::Unauthorized),
    ] {
        let mut ws = Ws::connect(&app.ws_url(&q)).await;
        ws.send_json(json!({"type": "auth", "token": token})).await;
        ws.expect_error(code).await;
        ws.expect_close(CloseCode::PolicyViolation).await;
    }
    // A socket without a session must authenticate too.
    let mut ws = Ws::connect(&app.ws_url("")).await;
    ws.send_json(json!({"type": "ping"})).await;
    ws.expect_error(ErrorCode::Unauthorized).await;

    // Alice, the owner, is served; bob's list does not show her session.
    for (method, path, body) in &calls[..5] {
        let status = call(method, path, &alice, body).await.unwrap().status();
        assert!(
            status.is_success() || status == 400 || status == 404,
            "{path}: {status}"
        );
    }
    let response = app.get(&format!("/api/history{q}"), &alice).await;
    assert_eq!(response.status(), 200);
    assert_eq!(list(&app, &bob, "").await["sessions"], json!([]));
    let mut ws = socket(app.addr, Some(session), &alice).await;
    ws.ping().await;
    let response = call("DELETE", &format!("/api/sessions/{session}"), &alice, &None)
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    ws.expect_close(CloseCode::PolicyViolation).await;
    assert_eq!(list(&app, &alice, "").await["sessions"], json!([]));
}

#[tokio::test]
async fn the_list_is_the_callers_newest_first_paged_and_live_on_every_device() {
    let login = Login::new();
    let (app, second) = two_gateways(&login).await;
    let alice = Login::token("alice", 600);
    let bob = Login::token("bob", 600);
    // Alice's other device, on the other gateway, follows her list.
    let mut device = socket(second.addr(), None, &alice).await;
    let (change, first_id, _) = list_change(&mut device).await;
    assert_eq!(change, SessionChange::Created);

    let mut created = vec![first_id];
    for _ in 0..4 {
        created.push(new_session(&app, &alice).await);
    }
    new_session(&app, &bob).await;
    for id in &created[1..] {
        assert_eq!(
            list_change(&mut device).await,
            (SessionChange::Created, *id, Some(String::new()))
        );
    }
    // A question moves a session to the top and names it.
    let asked = created[1];
    let response = app
        .post(
            &format!("/api/chat?session={asked}"),
            &alice,
            json!({"content": "  What is\n JetStream?  "}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let started = list_change(&mut device).await;
    assert_eq!(
        started,
        (
            SessionChange::AnswerStarted,
            asked,
            Some("What is JetStream?".to_string())
        )
    );
    let response = app
        .http
        .patch(app.url(&format!("/api/sessions/{}", created[2])))
        .bearer_auth(&alice)
        .json(&json!({"title": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        list_change(&mut device).await,
        (
            SessionChange::Renamed,
            created[2],
            Some("Renamed".to_string())
        )
    );

    // Pages of two, newest activity first, each session once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = list(&app, &alice, &format!("?limit=2{cursor}")).await;
        let sessions = page["sessions"].as_array().unwrap();
        assert!(sessions.len() <= 2);
        seen.extend(sessions.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let ids: Vec<SessionId> = seen
        .iter()
        .map(|s| s["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let mut expected = created.clone();
    assert_eq!(ids.len(), expected.len(), "{seen:?}");
    assert!(expected.iter().all(|id| ids.contains(id)), "{seen:?}");
    // Renamed last, asked before: the two most recent activities.
    assert_eq!(ids[..2], [created[2], asked], "{seen:?}");
    let updated: Vec<u64> = seen
        .iter()
        .map(|s| s["updated"].as_u64().unwrap())
        .collect();
    assert!(updated.windows(2).all(|w| w[0] >= w[1]), "{updated:?}");
    assert_eq!(
        seen[1]["in_flight"],
        json!(true),
        "no worker: still in flight"
    );
    assert_eq!(seen[0]["in_flight"], json!(false));
    assert_eq!(
        list(&app, &bob, "").await["sessions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let bad = app.get("/api/sessions?cursor=nope", &alice).await;
    assert_rest_error(bad, 400, ErrorCode::BadRequest).await;

    // Deleted from one device: gone from the other's list.
    let response = app
        .http
        .delete(app.url(&format!("/api/sessions/{}", created[3])))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        list_change(&mut device).await,
        (SessionChange::Deleted, created[3], None)
    );
    expected.retain(|id| *id != created[3]);
    let mut ids: Vec<SessionId> = list(&app, &alice, "").await["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().parse().unwrap())
        .collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected);
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn quotas_hold_per_user_across_gateways() {
    let login = Login::new();
    let app = TestApp::builder()
        .gateway_args(&login.args(&[
            "--user-sessions-per-minute",
            "2",
            "--user-max-in-flight",
            "2",
        ]))
        .start()
        .await;
    let second = another_gateway(
        &app,
        "gw-2",
        &login.args(&["--user-max-sessions", "3", "--user-max-in-flight", "2"]),
    )
    .await;
    let retry_after = |r: &reqwest::Response| -> u64 {
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };

    // New sessions per minute (first gateway).
    let carol = Login::token("carol", 600);
    for _ in 0..2 {
        assert_eq!(create(&app, app.addr, &carol).await.status(), 201);
    }
    let refused = create(&app, app.addr, &carol).await;
    let wait = retry_after(&refused);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_rest_error(refused, 429, ErrorCode::RateLimited).await;
    // Another user is not limited by carol's creations.
    let dave = Login::token("dave", 600);
    assert_eq!(create(&app, app.addr, &dave).await.status(), 201);

    // Sessions per user (second gateway): carol has 2, a third is allowed,
    // a fourth is not.
    assert_eq!(create(&app, second.addr(), &carol).await.status(), 201);
    let refused = create(&app, second.addr(), &carol).await;
    assert!(retry_after(&refused) >= 1);
    assert_rest_error(refused, 429, ErrorCode::RateLimited).await;

    // Answers in flight per user, across sessions and gateways (no worker:
    // every answer stays in flight).
    let erin = Login::token("erin", 600);
    let sessions = [
        new_session(&app, &erin).await,
        new_session(&app, &erin).await,
        new_session_on(&app, second.addr(), &erin).await,
    ];
    let ask = |gateway: std::net::SocketAddr, session: SessionId| {
        app.http
            .post(format!("http://{gateway}/api/chat?session={session}"))
            .bearer_auth(&erin)
            .json(&json!({"content": "hello"}))
            .send()
    };
    assert_eq!(ask(app.addr, sessions[0]).await.unwrap().status(), 202);
    assert_eq!(ask(second.addr(), sessions[1]).await.unwrap().status(), 202);
    let refused = ask(app.addr, sessions[2]).await.unwrap();
    assert!(retry_after(&refused) >= 1);
    assert_rest_error(refused, 429, ErrorCode::RateLimited).await;
    // Refused for the user, the question does not count in its session.
    let mut ws = socket(second.addr(), Some(sessions[2]), &erin).await;
    ws.send_json(json!({"type": "chat", "content": "again"}))
        .await;
    ws.expect_error(ErrorCode::RateLimited).await;
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_device_streams_cancels_and_regenerates_the_same_session() {
    let login = Login::new();
    let app = TestApp::builder()
        .gateway_args(&login.args(&[]))
        .real_worker_with(&["--demo-tokens-per-sec", "40", "--demo-answer-tokens", "400"])
        .start()
        .await;
    let second = another_gateway(&app, "gw-2", &login.args(&[])).await;
    let alice = Login::token("alice", 600);
    let session = new_session(&app, &alice).await;
    let mut laptop = socket(app.addr, Some(session), &alice).await;
    let mut phone = socket(second.addr(), Some(session), &alice).await;

    // Asked on the laptop, streams on both; stopped from the phone.
    let (id, _) = laptop.chat("a long answer please").await;
    let first_chunk = phone.until_kind(EventKind::Chunk).await;
    assert_eq!(first_chunk[0].event.kind(), EventKind::UserMessage);
    phone.cancel(id).await;
    let on_laptop = laptop.until_terminal(id).await;
    let on_phone = phone.until_terminal(id).await;
    assert_eq!(on_laptop.last().unwrap().event.kind(), EventKind::Cancelled);
    let seqs = |events: &[protocol::frames::SequencedEvent]| -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    };
    let phone_seqs: Vec<u64> = seqs(&first_chunk)
        .into_iter()
        .chain(seqs(&on_phone))
        .collect();
    assert_eq!(
        seqs(&on_laptop),
        phone_seqs,
        "every event once, in order, on both"
    );
    assert_eq!(count(&on_laptop, EventKind::Cancelled), 1);
    // The worker tells the user's devices the answer finished.
    let finished = tokio::time::timeout(WAIT, async {
        loop {
            let (change, id, _) = list_change(&mut phone).await;
            if change == SessionChange::AnswerFinished {
                return id;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(finished, session);

    // Regenerated from the phone: the laptop sees it.
    let (regenerated, _) = phone.regenerate(Some(id)).await;
    let events = laptop.until_kind(EventKind::UserMessage).await;
    assert_eq!(events.last().unwrap().event.message_id(), Some(regenerated));
    laptop.cancel(regenerated).await;
    phone.until_terminal(regenerated).await;
    second.shutdown().await.unwrap();
}
