//! Every NATS name of the system: streams, the consumer, the KV bucket, and
//! builder functions for per-session subjects. A subject string appears here
//! and nowhere else.

use crate::ids::{MessageId, SessionId, UserKey};

/// Work-queue of chat requests; a job lives until one worker acks it.
pub const REQUESTS_STREAM: &str = "CHAT_REQUESTS";
/// Every event a client may need to replay (the replay window).
pub const EVENTS_STREAM: &str = "CHAT_EVENTS";
/// One record per finished turn, kept long.
pub const HISTORY_STREAM: &str = "CHAT_HISTORY";
/// Requests that exhausted their deliveries, with the reason.
pub const DEAD_STREAM: &str = "CHAT_DEAD";
/// The durable pull consumer every worker shares.
pub const WORKERS_CONSUMER: &str = "workers";
/// Session metadata, token hashes, messages in flight and cancel flags.
pub const SESSIONS_BUCKET: &str = "chat_sessions";

/// Subjects of [`REQUESTS_STREAM`].
pub const REQUESTS_ALL: &str = "chat.requests.*";
/// Subjects of [`EVENTS_STREAM`] that hold a session's events.
pub const EVENTS_ALL: &str = "chat.events.*";
/// Subjects of [`EVENTS_STREAM`] that hold claims, not events (see
/// [`claims`]): never republished, never read by clients.
pub const CLAIMS_ALL: &str = "chat.claims.*.*";
/// Subjects of [`HISTORY_STREAM`].
pub const HISTORY_ALL: &str = "chat.history.*";
/// Subjects of [`DEAD_STREAM`].
pub const DEAD_ALL: &str = "chat.dead.*";
/// Source pattern of the events stream's republish.
pub const LIVE_REPUBLISH_SOURCE: &str = "chat.events.*";
/// Destination pattern of the republish: `chat.events.S` → `chat.live.S`.
pub const LIVE_REPUBLISH_DESTINATION: &str = "chat.live.{{wildcard(1)}}";
/// Cancel notices, a core subject per session; workers listen on all of them.
pub const CANCEL_ALL: &str = "chat.cancel.*";
/// Core subjects (not stored) on which a revoked session is announced: every
/// gateway closes that session's sockets.
pub const REVOKED_ALL: &str = "chat.revoked.*";
/// Core subjects (not stored), one per user of `GATEWAY_AUTH=jwt`: changes
/// to the user's session list and revocations of the user's sockets
/// (`users::UserNotice`). Gateways follow the users they have sockets of.
pub const USERS_ALL: &str = "chat.users.*";
/// Live copies of every session's events (the republish destination):
/// gateways follow them.
pub const LIVE_ALL: &str = "chat.live.*";
/// The root of every reply subject; each role replies under its own prefix
/// below it (`access::Role::inbox_prefix`).
pub const INBOX_ROOT: &str = "_INBOX";
/// JetStream's account info: the first call of every service.
pub const JS_API_INFO: &str = "$JS.API.INFO";
/// The whole JetStream API: operations only (`access::Role::Ops`).
pub const JS_API_ALL: &str = "$JS.API.>";
/// Queue group of workers for the max-deliveries advisory, so one worker
/// dead-letters each exhausted job.
pub const DEAD_LETTER_QUEUE_GROUP: &str = "chat-dead-letter";

/// A scratch stream `chatctl bench` creates to measure raw JetStream
/// publishing on the same server, and deletes after; never used by the chat.
pub const BENCH_STREAM: &str = "CHAT_BENCH";
/// The one subject of [`BENCH_STREAM`].
pub const BENCH_STREAM_SUBJECT: &str = "bench.stream";
/// A core subject `chatctl bench` measures plain publish → subscribe on.
pub const BENCH_CORE_SUBJECT: &str = "bench.core";
/// The subjects `bench.paced.<stream>` of [`BENCH_STREAM`] when the bench
/// publishes at a paced load's rate.
pub const BENCH_PACED_PREFIX: &str = "bench.paced";
/// Where [`BENCH_STREAM`] republishes its paced messages (as `CHAT_EVENTS`
/// republishes to `chat.live.*`).
pub const BENCH_LIVE_PREFIX: &str = "bench.live";
/// Every subject of the bench's scratch measurements.
pub const BENCH_ALL: &str = "bench.>";

/// Header set by the republish: the event's sequence in [`EVENTS_STREAM`].
pub const HEADER_SEQUENCE: &str = "Nats-Sequence";
/// Header set by the republish: the previous sequence on the same subject
/// (0 when the event is the subject's first). A live subscriber that has not
/// seen that sequence has a gap to fill from the stream.
pub const HEADER_LAST_SEQUENCE: &str = "Nats-Last-Sequence";
/// Publish header: the subject whose last sequence
/// `Nats-Expected-Last-Subject-Sequence` is checked against, instead of the
/// subject published to (nats-server 2.11 and later).
pub const HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";
/// On the end-of-batch reply of a batched direct get: matching messages the
/// batch did not include.
pub const HEADER_NUM_PENDING: &str = "Nats-Num-Pending";

pub fn requests(session: SessionId) -> String {
    format!("chat.requests.{session}")
}

pub fn events(session: SessionId) -> String {
    format!("chat.events.{session}")
}

/// Where the runs of one message that took its job over record their claim
/// (a [`crate::CancelNotice`] with its attempt) in [`EVENTS_STREAM`], each
/// compare-and-set against the claim it read, before their first event: the
/// claims of a message are stored in rising attempt order. A run's terminal
/// event is stored only while this subject's last sequence is the one the
/// run knows (its own claim, or none for a first attempt): a
/// compare-and-set on this subject ([`HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT`])
/// that the server checks as it stores the event.
pub fn claims(session: SessionId, message: MessageId) -> String {
    format!("chat.claims.{session}.{message}")
}

pub fn live(session: SessionId) -> String {
    format!("chat.live.{session}")
}

pub fn history(session: SessionId) -> String {
    format!("chat.history.{session}")
}

pub fn dead(session: SessionId) -> String {
    format!("chat.dead.{session}")
}

pub fn cancel(session: SessionId) -> String {
    format!("chat.cancel.{session}")
}

pub fn revoked(session: SessionId) -> String {
    format!("chat.revoked.{session}")
}

/// The notices of one user (`USERS_ALL`).
pub fn user_feed(user: &UserKey) -> String {
    format!("chat.users.{user}")
}

/// The user a notice was published for.
pub fn user_of_feed(subject: &str) -> Option<UserKey> {
    UserKey::parse(subject.strip_prefix("chat.users.")?)
}

/// The session a revocation was announced for.
pub fn session_of_revoked(subject: &str) -> Option<SessionId> {
    subject.strip_prefix("chat.revoked.")?.parse().ok()
}

/// The Direct Get API of a stream (ADR-31): batched reads served by any
/// replica without creating a consumer.
pub fn direct_get(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

/// The stream behind [`SESSIONS_BUCKET`] (JetStream names a bucket's stream
/// `KV_<bucket>`).
pub fn kv_stream() -> String {
    format!("KV_{SESSIONS_BUCKET}")
}

/// Every key of [`SESSIONS_BUCKET`] as the subjects its writes go to.
pub fn kv_keys_all() -> String {
    format!("$KV.{SESSIONS_BUCKET}.>")
}

/// The info request of a stream.
pub fn stream_info(stream: &str) -> String {
    format!("$JS.API.STREAM.INFO.{stream}")
}

/// Reads one stored message by its sequence (not a direct get).
pub fn stream_message_get(stream: &str) -> String {
    format!("$JS.API.STREAM.MSG.GET.{stream}")
}

/// Deletes one stored message by its sequence.
pub fn stream_message_delete(stream: &str) -> String {
    format!("$JS.API.STREAM.MSG.DELETE.{stream}")
}

/// The info request of a consumer.
pub fn consumer_info(stream: &str, consumer: &str) -> String {
    format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}")
}

/// The pull request ("next messages") of a pull consumer.
pub fn consumer_next(stream: &str, consumer: &str) -> String {
    format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")
}

/// The subjects a consumer's messages are acked on (their reply subjects).
pub fn acks(stream: &str, consumer: &str) -> String {
    format!("$JS.ACK.{stream}.{consumer}.>")
}

/// The advisory the server publishes when a job of the workers consumer hit
/// `max_deliver` without being acked.
pub fn max_deliveries_advisory() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{REQUESTS_STREAM}.{WORKERS_CONSUMER}")
}

/// KV key of a session's record in [`SESSIONS_BUCKET`]: the session id itself,
/// so `nats kv get chat_sessions <session>` finds it.
pub fn session_key(session: SessionId) -> String {
    session.to_string()
}

/// KV key of a user's record (`records::UserRecord`: the user's session
/// list, answers in flight, recent creations). One key per user, so
/// listing a user's sessions reads that user's key and nothing else.
pub fn user_key(user: &UserKey) -> String {
    format!("user.{user}")
}

/// KV key of a user's revocation time (ms): tokens issued at or before it
/// are refused. Apart from the user's record, because every request of the
/// user reads it and it is a few bytes.
pub fn user_revoked_key(user: &UserKey) -> String {
    format!("revoked.{user}")
}

/// KV key of the cancel flag of one message, read by the worker that pulls a
/// job still waiting in the queue. Message ids are the client's choice, so
/// the key holds the session too: one session cannot flag another's message.
pub fn cancel_flag_key(session: SessionId, message: MessageId) -> String {
    format!("cancel.{session}.{message}")
}

/// KV key of the latest claim on one message: the attempt number of the
/// worker that took its job over (written by attempts after the first). The
/// claim notice on `chat.cancel.<session>` is core NATS and can be lost;
/// the worker it should stop reads this key with each progress ack.
pub fn claim_key(session: SessionId, message: MessageId) -> String {
    format!("claim.{session}.{message}")
}

/// The `Nats-Msg-Id` of a request and of its user-message event (and of the
/// turn and dead letter a worker stores once per message): session and
/// message id, so a retried send is deduplicated by JetStream, and a message
/// id another session chose is a different message.
pub fn dedup_id(session: SessionId, message: MessageId) -> String {
    format!("{session}.{message}")
}

/// The session a cancel notice was published for: the last token of
/// [`cancel`]'s subject.
pub fn session_of_cancel(subject: &str) -> Option<SessionId> {
    subject.strip_prefix("chat.cancel.")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_session_subjects_fall_under_their_stream_patterns() {
        let s = SessionId::new();
        for (subject, pattern) in [
            (requests(s), REQUESTS_ALL),
            (events(s), EVENTS_ALL),
            (history(s), HISTORY_ALL),
            (dead(s), DEAD_ALL),
            (cancel(s), CANCEL_ALL),
            (claims(s, MessageId::new()), CLAIMS_ALL),
        ] {
            let prefix = pattern.trim_end_matches("*.*").trim_end_matches('*');
            assert!(subject.starts_with(prefix), "{subject} vs {pattern}");
            assert_eq!(subject.split('.').count(), pattern.split('.').count());
        }
        assert_eq!(live(s).replace("live", "events"), events(s));
        assert_eq!(session_of_cancel(&cancel(s)), Some(s));
        assert_eq!(session_of_cancel("chat.cancel.nope"), None);
        assert_eq!(session_of_revoked(&revoked(s)), Some(s));
        assert!(revoked(s).starts_with(REVOKED_ALL.trim_end_matches('*')));
        let user = UserKey::of_subject("alice");
        assert!(user_feed(&user).starts_with(USERS_ALL.trim_end_matches('*')));
        assert_eq!(user_of_feed(&user_feed(&user)), Some(user.clone()));
        assert_ne!(user_key(&user), user_revoked_key(&user));
    }

    #[test]
    fn keys_of_one_message_id_differ_between_sessions() {
        let (a, b, m) = (SessionId::new(), SessionId::new(), MessageId::new());
        assert_ne!(dedup_id(a, m), dedup_id(b, m));
        assert_ne!(cancel_flag_key(a, m), cancel_flag_key(b, m));
        assert_ne!(claim_key(a, m), claim_key(b, m));
        assert_ne!(claim_key(a, m), cancel_flag_key(a, m));
    }
}
