//! Each NATS role against a real nats-server secured as `just up` secures it
//! (`protocol::access`, README "NATS access"): what its work needs is
//! allowed, and the rest is refused by the server, which says so with a
//! permissions violation naming the subject. A refused admin request also
//! leaves its target as it was.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use protocol::access::Role;
use protocol::setup::LayoutConfig;
use protocol::{subjects, SessionId};
use stack::nats::NatsServer;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// A client of one role that keeps what the server reports as errors.
struct Watched {
    role: Role,
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

async fn connect(nats: &NatsServer, role: Role) -> Watched {
    let (tx, errors) = mpsc::unbounded_channel();
    let options = nats
        .access(role)
        .apply(role, async_nats::ConnectOptions::new())
        .unwrap()
        .event_callback(move |event| {
            if let async_nats::Event::ServerError(e) = event {
                let _ = tx.send(e.to_string());
            }
            async {}
        });
    let client = options.connect(nats.url()).await.unwrap();
    Watched {
        role,
        client,
        errors,
    }
}

impl Watched {
    fn js(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// Waits for the server's permissions violation naming `kind` ("publish"
    /// or "subscription") and `subject`.
    async fn expect_violation(&mut self, kind: &str, subject: &str) {
        let role = self.role;
        let found = tokio::time::timeout(WAIT, async {
            while let Some(error) = self.errors.recv().await {
                let lower = error.to_lowercase();
                if lower.contains("permissions violation")
                    && lower.contains(kind)
                    && error.contains(&format!("\"{subject}\""))
                {
                    return;
                }
            }
        })
        .await;
        assert!(found.is_ok(), "{role}: no refusal of {kind} to {subject}");
    }

    async fn refused_publish(&mut self, subject: &str) {
        self.client
            .publish(subject.to_string(), "x".into())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        self.expect_violation("publish", subject).await;
    }

    async fn refused_subscribe(&mut self, subject: &str) {
        let _subscription = self.client.subscribe(subject.to_string()).await.unwrap();
        self.client.flush().await.unwrap();
        self.expect_violation("subscription", subject).await;
    }

    /// No violation was reported so far (what was allowed went through).
    fn no_violation_yet(&mut self) {
        if let Ok(error) = self.errors.try_recv() {
            panic!("{}: unexpected refusal: {error}", self.role);
        }
    }
}

/// A server with the layout applied by ops, as `just up` does.
async fn secured_server() -> NatsServer {
    let nats = NatsServer::start().unwrap();
    let ops = connect(&nats, Role::Ops).await;
    protocol::setup::ensure(&ops.js(), &LayoutConfig::default())
        .await
        .unwrap();
    nats
}

/// The stream still exists, read by the harness (not the refused role).
async fn stream_exists(nats: &NatsServer, name: &str) -> bool {
    let js = jetstream::new(nats.connect().await.unwrap());
    js.get_stream(name).await.is_ok()
}

#[tokio::test]
async fn a_client_without_a_known_nkey_is_refused() {
    let nats = NatsServer::start().unwrap();
    assert!(async_nats::connect(nats.url()).await.is_err());
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let refused = async_nats::ConnectOptions::with_nkey(stranger)
        .connect(nats.url())
        .await;
    assert!(refused.is_err(), "an nkey the server does not list got in");
}

#[tokio::test]
async fn the_gateway_does_its_work_and_nothing_more() {
    let nats = secured_server().await;
    let mut gateway = connect(&nats, Role::Gateway).await;
    let js = gateway.js();
    let session = SessionId::new();

    // Allowed: follow a session's live events, store an event, queue a job,
    // read and write the session bucket, direct-get events, read a
    // session's last event through the events stream's leader.
    let mut live = gateway
        .client
        .subscribe(subjects::live(session))
        .await
        .unwrap();
    gateway.client.flush().await.unwrap();
    js.publish(subjects::events(session), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let republished = tokio::time::timeout(WAIT, live.next()).await.unwrap();
    assert!(republished.is_some());
    js.publish(subjects::requests(session), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let bucket = js.get_key_value(subjects::SESSIONS_BUCKET).await.unwrap();
    bucket
        .put(subjects::session_key(session), "r".into())
        .await
        .unwrap();
    assert!(bucket
        .get(subjects::session_key(session))
        .await
        .unwrap()
        .is_some());
    // An unknown session: the miss is read again through the leader.
    assert!(protocol::sessions::load(&bucket, SessionId::new())
        .await
        .unwrap()
        .is_none());
    let events = js.get_stream(subjects::EVENTS_STREAM).await.unwrap();
    let last = events
        .direct_get_last_for_subject(subjects::events(session))
        .await
        .unwrap()
        .sequence;
    // The same, as the events stream's leader holds it (`GET /api/events`).
    let at_leader = protocol::stored::last_seq_at_leader(&events, &subjects::events(session))
        .await
        .unwrap();
    assert_eq!(at_leader, last);
    // A user's notices: heard and published by every gateway.
    let owner = protocol::UserKey::of_subject("alice");
    let mut notices = gateway
        .client
        .subscribe(subjects::user_feed(&owner))
        .await
        .unwrap();
    gateway
        .client
        .publish(subjects::user_feed(&owner), "{}".into())
        .await
        .unwrap();
    assert!(tokio::time::timeout(WAIT, notices.next())
        .await
        .unwrap()
        .is_some());
    gateway.no_violation_yet();

    // Refused: the layout's admin API, the workers' jobs, other roles'
    // subjects and inboxes.
    for subject in [
        format!("$JS.API.STREAM.DELETE.{}", subjects::EVENTS_STREAM),
        format!("$JS.API.STREAM.PURGE.{}", subjects::EVENTS_STREAM),
        format!("$JS.API.STREAM.UPDATE.{}", subjects::EVENTS_STREAM),
        format!("$JS.API.STREAM.CREATE.{}", "MINE"),
        format!("$JS.API.STREAM.DELETE.{}", subjects::kv_stream()),
        format!("$JS.API.CONSUMER.CREATE.{}.mine", subjects::REQUESTS_STREAM),
        subjects::consumer_next(subjects::REQUESTS_STREAM, subjects::WORKERS_CONSUMER),
        subjects::history(session),
        subjects::dead(session),
        // Only a worker claims a message's job.
        subjects::claims(session, protocol::MessageId::new()),
        // Leader reads of the session bucket and of events only: not of
        // the jobs, the turns or the dead letters.
        subjects::stream_message_get(subjects::REQUESTS_STREAM),
        subjects::stream_message_get(subjects::HISTORY_STREAM),
        subjects::stream_message_get(subjects::DEAD_STREAM),
        subjects::stream_message_delete(&subjects::kv_stream()),
        subjects::stream_message_delete(subjects::EVENTS_STREAM),
    ] {
        gateway.refused_publish(&subject).await;
    }
    for subject in ["chat.cancel.*", "_INBOX.worker.>", ">", "chat.events.*"] {
        gateway.refused_subscribe(subject).await;
    }
    assert!(stream_exists(&nats, subjects::EVENTS_STREAM).await);
    assert!(stream_exists(&nats, &subjects::kv_stream()).await);
}

#[tokio::test]
async fn the_worker_does_its_work_and_nothing_more() {
    let nats = secured_server().await;
    let gateway = connect(&nats, Role::Gateway).await;
    let session = SessionId::new();
    gateway
        .js()
        .publish(subjects::requests(session), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let mut worker = connect(&nats, Role::Worker).await;
    let js = worker.js();
    // Allowed: pull the job from the workers consumer and ack it, store
    // an event, a turn and a dead letter, hear cancels and claim a job.
    let consumer: jetstream::consumer::Consumer<pull::Config> = js
        .get_stream(subjects::REQUESTS_STREAM)
        .await
        .unwrap()
        .get_consumer(subjects::WORKERS_CONSUMER)
        .await
        .unwrap();
    let mut jobs = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let job = jobs.next().await.unwrap().unwrap();
    job.double_ack().await.unwrap();
    for subject in [
        subjects::events(session),
        subjects::claims(session, protocol::MessageId::new()),
        subjects::history(session),
        subjects::dead(session),
    ] {
        js.publish(subject, "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let _cancels = worker.client.subscribe(subjects::CANCEL_ALL).await.unwrap();
    // A claim of a job it took over goes out on the cancel subject.
    worker
        .client
        .publish(subjects::cancel(session), "{}".into())
        .await
        .unwrap();
    // "Answer finished" in the owner's session list.
    let owner = protocol::UserKey::of_subject("alice");
    worker
        .client
        .publish(subjects::user_feed(&owner), "{}".into())
        .await
        .unwrap();
    // An unknown session: the miss is read again through the leader.
    let bucket = js.get_key_value(subjects::SESSIONS_BUCKET).await.unwrap();
    assert!(protocol::sessions::load(&bucket, SessionId::new())
        .await
        .unwrap()
        .is_none());
    worker.client.flush().await.unwrap();
    worker.no_violation_yet();

    // Refused: the layout, the gateway's subjects (jobs, revocations, live
    // copies, its inbox), and everything else.
    for subject in [
        format!("$JS.API.STREAM.DELETE.{}", subjects::REQUESTS_STREAM),
        format!("$JS.API.STREAM.CREATE.{}", "MINE"),
        format!(
            "$JS.API.CONSUMER.DELETE.{}.{}",
            subjects::REQUESTS_STREAM,
            subjects::WORKERS_CONSUMER
        ),
        format!("$JS.API.STREAM.PURGE.{}", subjects::kv_stream()),
        subjects::stream_message_get(subjects::EVENTS_STREAM),
        subjects::stream_message_delete(&subjects::kv_stream()),
        subjects::requests(session),
        subjects::revoked(session),
    ] {
        worker.refused_publish(&subject).await;
    }
    for subject in [
        "chat.live.*",
        "_INBOX.gateway.>",
        "chat.requests.*",
        subjects::USERS_ALL,
        ">",
    ] {
        worker.refused_subscribe(subject).await;
    }
    assert!(stream_exists(&nats, subjects::REQUESTS_STREAM).await);
}

#[tokio::test]
async fn ops_owns_the_layout_but_cannot_pose_as_a_service() {
    let nats = secured_server().await;
    let mut ops = connect(&nats, Role::Ops).await;
    let session = SessionId::new();
    // Allowed: the layout (applied by `secured_server` already) and reading it.
    let info = ops
        .js()
        .get_stream(subjects::EVENTS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.name, subjects::EVENTS_STREAM);
    ops.no_violation_yet();
    // Refused: injecting events, queueing jobs, writing the bucket directly,
    // reading live copies.
    for subject in [
        subjects::events(session),
        subjects::requests(session),
        format!("$KV.{}.{}", subjects::SESSIONS_BUCKET, session),
        subjects::user_feed(&protocol::UserKey::of_subject("alice")),
    ] {
        ops.refused_publish(&subject).await;
    }
    ops.refused_subscribe("chat.live.*").await;
    ops.refused_subscribe(subjects::USERS_ALL).await;
}

/// The README's table of permissions is the one `protocol::access` gives.
#[test]
fn the_readme_shows_the_permissions_the_server_enforces() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let table = protocol::access::permissions_table();
    assert!(
        readme.contains(&table),
        "README.md, \"NATS access\", must hold this table:\n{table}"
    );
}
