//! Test support: a real nats-server with the layout, and a test acting as
//! the gateway (session record, user-message event, chat request).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use clap::Parser;
use futures::StreamExt;
use protocol::access::Role;
use protocol::records::{ActiveMessage, SessionRecord, Turn};
use protocol::setup::{ensure, Layout};
use protocol::EventKind;
use protocol::{
    sessions, stored, subjects, CancelNotice, ChatRequest, Event, MessageId, SessionId,
    SessionToken,
};
use stack::nats::NatsServer;

pub const WAIT: Duration = Duration::from_secs(15);

/// Worker flags for a demo answer of 40 tokens at once.
pub const FAST: &[&str] = &[
    "--demo-tokens-per-sec",
    "0",
    "--demo-first-token-ms",
    "0",
    "--demo-answer-tokens",
    "40",
];

pub struct Harness {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub layout: Layout,
    /// Layout flags every worker of this harness gets.
    pub layout_args: Vec<String>,
}

impl Harness {
    /// A server and the layout, with a short `ack_wait` and few deliveries.
    pub async fn start(ack_wait_ms: u64, max_deliver: i64) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            telemetry::init_logging("worker-test");
        }
        let server = NatsServer::start().unwrap();
        let client = server.connect().await.unwrap();
        let js = jetstream::new(client.clone());
        let layout_args = vec![
            "--ack-wait-ms".to_string(),
            ack_wait_ms.to_string(),
            "--max-deliver".to_string(),
            max_deliver.to_string(),
        ];
        // What a worker given these flags (and this process's environment)
        // verifies, applied as operations would before it starts.
        let layout_config = worker_config(&server.url(), &layout_args, &[]).layout;
        let ops = jetstream::new(server.connect_as(Role::Ops).await.unwrap());
        ensure(&ops, &layout_config).await.unwrap();
        // The test's own handles, on the harness's client (ops may not
        // write sessions).
        let layout = protocol::setup::verify(&js, &layout_config).await.unwrap();
        Self {
            server,
            client,
            js,
            layout,
            layout_args,
        }
    }

    /// Takes the next job off the workers' consumer the way a worker that
    /// then dies would: delivered, never acked. Returns its delivery count.
    pub async fn take_and_abandon(&self) -> u64 {
        let consumer = protocol::setup::workers_consumer(&self.layout)
            .await
            .unwrap();
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .unwrap();
        let message = batch.next().await.unwrap().unwrap();
        let delivered = message.info().unwrap().delivered;
        drop(message);
        u64::try_from(delivered).unwrap()
    }

    /// A worker running attempt 2 of `id`, the harness's one queued job
    /// (attempt 1 taken and abandoned here), paused `claim_pause_ms` between
    /// reading the message's claims (after its admit reads) and storing its
    /// own; returns once that read was made, with a subscription that sees
    /// every later read of the claims.
    pub async fn attempt_2_paused_at_its_claim(
        &self,
        session: SessionId,
        id: MessageId,
        claim_pause_ms: &str,
    ) -> (worker::RunningWorker, async_nats::Subscriber) {
        assert_eq!(self.take_and_abandon().await, 1);
        // The claim read is a direct get of the claims subject.
        let mut claim_reads = self
            .client
            .subscribe(format!(
                "$JS.API.DIRECT.GET.{}.{}",
                subjects::EVENTS_STREAM,
                subjects::claims(session, id)
            ))
            .await
            .unwrap();
        let mut args = FAST.to_vec();
        args.extend(["--test-claim-pause-ms", claim_pause_ms]);
        let worker = self.spawn_worker(&args).await;
        tokio::time::timeout(Duration::from_secs(20), claim_reads.next())
            .await
            .expect("attempt 2 read the message's claims")
            .unwrap();
        (worker, claim_reads)
    }

    /// A new client of the harness's own after the server restarted: the
    /// old one reconnects on its own schedule, seconds later.
    pub async fn reconnect(&mut self) {
        self.client = self.server.connect().await.unwrap();
        self.js = jetstream::new(self.client.clone());
        let layout_config = worker_config(&self.server.url(), &self.layout_args, &[]).layout;
        self.layout = protocol::setup::verify(&self.js, &layout_config)
            .await
            .unwrap();
    }

    pub fn worker_config(&self, extra: &[&str]) -> worker::WorkerConfig {
        // The worker role's credentials, as a deployed worker has.
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(self.server.access(Role::Worker).to_args());
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        worker_config(&self.server.url(), &self.layout_args, &extra)
    }

    pub async fn spawn_worker(&self, extra: &[&str]) -> worker::RunningWorker {
        worker::spawn(self.worker_config(extra)).await.unwrap()
    }

    pub async fn new_session(&self) -> SessionId {
        let session = SessionId::new();
        let record = SessionRecord::new(SessionToken::generate().hash(), "test".into(), 1);
        sessions::create(&self.layout.sessions, session, &record)
            .await
            .unwrap();
        session
    }

    /// Does what a gateway does on `chat`: record, echo, queue.
    pub async fn submit(&self, session: SessionId, content: &str) -> MessageId {
        self.submit_for_model(session, content, None).await
    }

    pub async fn submit_for_model(
        &self,
        session: SessionId,
        content: &str,
        model: Option<&str>,
    ) -> MessageId {
        self.submit_question(session, content, model, None).await
    }

    /// Does what a gateway does on `regenerate`: the same question again as a
    /// new message that names the one it replaces.
    pub async fn submit_regeneration(
        &self,
        session: SessionId,
        content: &str,
        replaces: MessageId,
    ) -> MessageId {
        self.submit_question(session, content, None, Some(replaces))
            .await
    }

    async fn submit_question(
        &self,
        session: SessionId,
        content: &str,
        model: Option<&str>,
        replaces: Option<MessageId>,
    ) -> MessageId {
        let message_id = MessageId::new();
        let now = protocol::now_ms();
        sessions::update(&self.layout.sessions, session, |r| {
            r.active.push(ActiveMessage {
                message_id,
                accepted_at_ms: now,
                ending: false,
                extra: Default::default(),
            });
            Ok::<_, ()>(true)
        })
        .await
        .unwrap()
        .unwrap();
        let echo = Event::UserMessage {
            message_id,
            content: content.into(),
            replaces,
        };
        let ack = self
            .js
            .send_publish(
                subjects::events(session),
                PublishMessage::build()
                    .payload(echo.to_payload())
                    .message_id(subjects::dedup_id(session, message_id)),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let request = ChatRequest {
            session_id: session,
            message_id,
            content: content.into(),
            user_seq: ack.sequence,
            replaces,
            model: model.map(str::to_string),
            accepted_at_ms: now,
            extra: Default::default(),
        };
        self.js
            .send_publish(
                subjects::requests(session),
                PublishMessage::build()
                    .payload(serde_json::to_vec(&request).unwrap().into())
                    .message_id(subjects::dedup_id(session, message_id)),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        message_id
    }

    /// Does what a gateway does on `cancel` of an active message.
    pub async fn cancel(&self, session: SessionId, message_id: MessageId) {
        self.layout
            .sessions
            .put(subjects::cancel_flag_key(session, message_id), "1".into())
            .await
            .unwrap();
        self.client
            .publish(
                subjects::cancel(session),
                CancelNotice {
                    attempt: None,
                    message_id,
                    claimed_by: None,
                }
                .to_payload(),
            )
            .await
            .unwrap();
        self.client.flush().await.unwrap();
    }

    pub async fn live(&self, session: SessionId) -> Live {
        let sub = self
            .client
            .subscribe(subjects::live(session))
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        Live { sub }
    }

    /// Stores `event` on the session's subject as another run would, and
    /// returns its sequence.
    pub async fn store_event(&self, session: SessionId, event: &Event) -> u64 {
        self.js
            .publish(subjects::events(session), event.to_payload())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    }

    /// Every stored event of the session, in order.
    pub async fn stored_events(&self, session: SessionId) -> Vec<Event> {
        let subject = subjects::events(session);
        let last = stored::last_seq(&self.layout.events, &subject)
            .await
            .unwrap();
        stored::read_range(
            &self.client,
            &self.layout.events,
            &subject,
            1,
            last,
            usize::MAX,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|s| serde_json::from_slice(&s.payload).unwrap())
        .collect()
    }

    pub async fn turns(&self, session: SessionId) -> Vec<Turn> {
        stored::read_turns(&self.client, &self.layout.history, session, 100)
            .await
            .unwrap()
    }

    pub async fn record(&self, session: SessionId) -> SessionRecord {
        sessions::load(&self.layout.sessions, session)
            .await
            .unwrap()
            .unwrap()
            .record
    }

    pub async fn queued_jobs(&self) -> u64 {
        let mut requests = self.layout.requests.clone();
        requests.info().await.unwrap().state.messages
    }

    /// Waits until the work-queue is empty (every job acked or removed).
    pub async fn wait_queue_empty(&self) {
        wait_until(|| async { self.queued_jobs().await == 0 }).await;
    }
}

/// A worker's configuration: test defaults, the harness's layout flags, `extra`.
fn worker_config(nats_url: &str, layout_args: &[String], extra: &[&str]) -> worker::WorkerConfig {
    let mut args: Vec<String> = vec![
        "--nats-url".into(),
        nats_url.into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(layout_args.iter().cloned());
    args.extend(extra.iter().map(|s| s.to_string()));
    worker::WorkerConfig::parse_from(std::iter::once("worker".to_string()).chain(args))
}

/// Polls `condition` until it holds; fails the test after [`WAIT`].
pub async fn wait_until<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !condition().await {
        assert!(Instant::now() < deadline, "condition not met in {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The live (republished) events of one session.
pub struct Live {
    sub: async_nats::Subscriber,
}

impl Live {
    /// The next event and when it arrived.
    pub async fn next(&mut self) -> (Event, Instant) {
        let message = tokio::time::timeout(WAIT, self.sub.next())
            .await
            .expect("no live event in time")
            .expect("live subscription ended");
        (
            serde_json::from_slice(&message.payload).unwrap(),
            Instant::now(),
        )
    }

    /// Events up to and including the first that `stop` accepts.
    pub async fn until(&mut self, mut stop: impl FnMut(&Event) -> bool) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            let (event, _) = self.next().await;
            let done = stop(&event);
            out.push(event);
            if done {
                return out;
            }
        }
    }
}

/// Chunk texts of one attempt of one message, concatenated, after checking
/// their indexes count from 0 without a gap.
pub fn answer_of(events: &[Event], message: MessageId, attempt: u32) -> String {
    pieces_of(events, message, attempt, EventKind::Chunk)
}

/// Reasoning texts of one attempt of one message, concatenated, after
/// checking their indexes count from 0 without a gap (apart from the chunks').
pub fn reasoning_of(events: &[Event], message: MessageId, attempt: u32) -> String {
    pieces_of(events, message, attempt, EventKind::Reasoning)
}

/// The texts of `kind` (chunk or reasoning) of one attempt, in order.
fn pieces_of(events: &[Event], message: MessageId, attempt: u32, kind: EventKind) -> String {
    let mut text = String::new();
    let mut expected = 0;
    for event in events.iter().filter(|e| e.kind() == kind) {
        let (Event::Chunk {
            message_id,
            attempt: a,
            index,
            text: t,
            published_at_us,
        }
        | Event::Reasoning {
            message_id,
            attempt: a,
            index,
            text: t,
            published_at_us,
        }) = event
        else {
            continue;
        };
        if *message_id == message && *a == attempt {
            assert_eq!(
                *index, expected,
                "{kind:?} indexes count from 0 per attempt"
            );
            assert!(published_at_us.is_some());
            assert!(!t.is_empty());
            expected += 1;
            text.push_str(t);
        }
    }
    text
}

/// The kinds of one message's events in their stored order, runs of the
/// same kind folded into one: `[user_message, reasoning, chunk, done]`.
pub fn kinds_of(events: &[Event], message: MessageId) -> Vec<protocol::EventKind> {
    let mut kinds: Vec<protocol::EventKind> = events
        .iter()
        .filter(|e| e.message_id() == Some(message))
        .map(Event::kind)
        .collect();
    kinds.dedup();
    kinds
}
