//! One WebSocket connection: authentication, `ready`, replay, live events
//! with gap repair, the client's frames, and the ways a socket ends (bad
//! token 1008, invalid UTF-8 1007, oversize 1009, shutdown 1012, a client
//! whose writes block for the write timeout 1013). In `GATEWAY_AUTH=jwt`
//! mode it also follows its user's session list (`session_list` frames),
//! warns before its token expires (`token_expiring`, then 1008 `token
//! expired` without a `refresh`) and closes when the user's sockets are
//! revoked (1008 `user revoked`). A client that merely
//! falls behind the live feed is caught up from the stream, not closed.
//!
//! Choices for bad input: a bad `after_seq` query parameter (not a number,
//! negative, beyond the stream) gets an `error bad_request` frame and close
//! 1008 — the client asked for a replay that cannot be honoured, so it is not
//! attached at all; the same in a `resume` frame gets the error frame and the
//! connection carries on. Invalid UTF-8 in a text frame closes with 1007
//! (tungstenite reports it, this module sends the close). Binary frames get
//! `bad_request` and the connection carries on.
//!
//! Two tasks per socket: a reader ([`reader`]) that parses and rate-limits
//! the client's frames, and this module's loop, which owns the write half
//! through the [`relay`] (the sequence bookkeeping), so the order of frames
//! and what counts as sent live in one place.

mod outbox;
mod reader;
mod relay;

use axum::extract::ws::{Message, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, StreamExt};
use protocol::frames::{ClientFrame, ControlFrame};
use protocol::{CloseCode, SessionId, SessionToken};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tracing::Instrument;

use self::outbox::Outbox;
use self::reader::Command;
use self::relay::Relay;
use crate::app::AppState;
use crate::error::ApiError;
use crate::live::{AttachError, Attachment};
use crate::replay::{self, Position, SessionEvents, StoredEvents};
use crate::user_feed::UserAttachment;
use crate::users::{self, User};
use crate::{auth, metrics};

/// Live events queued for one write at most, before the loop looks at its
/// other inputs again.
const DRAIN_AT_ONCE: usize = 64;

/// Commands from the reader to the relay. Bounded: a client that floods
/// while its socket is slow waits on itself, never on anyone else.
const COMMAND_QUEUE: usize = 64;

/// How a socket ended.
#[derive(Debug)]
enum End {
    /// The client went away (or closed): nothing more to send.
    Closed,
    Close(CloseCode, &'static str),
}

/// The query of `/ws/chat`: no session creates one; a session's token comes
/// in the first frame (`auth`), or with `--allow-url-token` as `token` here;
/// `after_seq` asks for a replay of what came after it.
#[derive(Deserialize)]
pub struct SocketQuery {
    pub session: Option<String>,
    pub token: Option<SessionToken>,
    pub after_seq: Option<String>,
}

/// A refused socket: the error frame it gets, then the close and its reason.
type Refusal = (ApiError, CloseCode, &'static str);

type SocketRelay = Relay<SplitSink<WebSocket, Message>, SessionEvents>;

/// Serves one upgraded socket until it ends.
pub async fn serve(socket: WebSocket, state: AppState, query: SocketQuery) {
    metrics::connection_opened();
    let span = tracing::info_span!(
        "ws.connection",
        node = %state.node,
        session_id = tracing::field::Empty
    );
    run(socket, state, query).instrument(span).await;
    metrics::connection_closed();
}

async fn run(socket: WebSocket, state: AppState, query: SocketQuery) {
    let (sink, mut stream) = socket.split();
    let mut outbox = Outbox::new(sink, state.config.write_timeout());
    // Cold paths are boxed: an async fn's future is as large as the largest
    // future it awaits inline, and ten thousand idle sockets would each
    // carry the room that only attaching, replaying or submitting need.
    let attached = match Box::pin(authenticate(&state, query, &mut stream)).await {
        Ok(query) => Box::pin(attach(&state, query))
            .await
            .map_err(|(error, close)| (error, close, "refused")),
        Err(refused) => Err(refused),
    };
    let attached = match attached {
        Ok(attached) => attached,
        Err((error, close, reason)) => {
            // The error frame says why; the close code is what a client acts on.
            let frame = error.frame(None).to_json();
            let _ = outbox.feed(frame.into()).await;
            outbox.close(close, reason).await;
            return;
        }
    };
    tracing::Span::current().record("session_id", tracing::field::display(attached.session));
    Box::pin(auth::record_attach(&state, attached.session)).await;

    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    let user_key = attached.user.as_ref().map(|u| u.key.clone());
    let reader = tokio::spawn(
        reader::read(stream, state.clone(), attached.session, user_key, commands).in_current_span(),
    );
    let start_after = attached.after_seq.unwrap_or(attached.position.last_seq);
    let mut relay = Relay::new(outbox, attached.events.clone(), start_after);
    let started = match Box::pin(start(&mut relay, &state, &attached)).await {
        Ok(()) => relay.flush().await,
        Err(end) => Err(end),
    };
    let expiry = attached
        .user
        .as_ref()
        .map(|u| Expiry::of(u.claims.exp, state.config.auth.token_expiring_ms));
    let end = match started {
        Ok(()) => {
            let links = Links {
                attachment: attached.attachment,
                user_feed: attached.user_feed,
                expiry,
                replayed: attached.after_seq.is_some(),
            };
            forward(&mut relay, &state, links, inbox).await
        }
        Err(end) => end,
    };
    relay.end(end).await;
    reader.abort();
}

struct Attached {
    session: SessionId,
    created_token: Option<SessionToken>,
    events: SessionEvents,
    attachment: Attachment,
    after_seq: Option<u64>,
    position: Position,
    /// `jwt` mode: the socket's user and its session-list feed.
    user: Option<User>,
    user_feed: Option<UserAttachment>,
}

/// What a socket's loop follows besides its client.
struct Links {
    attachment: Attachment,
    user_feed: Option<UserAttachment>,
    expiry: Option<Expiry>,
    /// The socket started with a replay of stored events.
    replayed: bool,
}

/// The longest a socket's token is watched for (a year): past it the socket
/// closes as if the token expired, and the client logs in again.
const MAX_TOKEN_LIFE_MS: u64 = 365 * 24 * 3600 * 1000;

/// When the socket's token expires (`jwt` mode), and when it is told so.
#[derive(Debug, Clone, Copy)]
struct Expiry {
    at: Instant,
    warn_at: Instant,
    warned: bool,
}

impl Expiry {
    /// From the token's `exp` (seconds since the epoch).
    fn of(exp_secs: u64, warn_before_ms: u64) -> Self {
        // Bounded: a token valid for centuries must not overflow an Instant.
        let left_ms = exp_secs
            .saturating_mul(1000)
            .saturating_sub(protocol::now_ms())
            .min(MAX_TOKEN_LIFE_MS);
        let now = Instant::now();
        let at = now + std::time::Duration::from_millis(left_ms);
        let warn_at =
            now + std::time::Duration::from_millis(left_ms.saturating_sub(warn_before_ms));
        Self {
            at,
            warn_at,
            warned: false,
        }
    }
}

/// The close code for a refused attach: the client's fault is a policy
/// violation (1008); NATS trouble, and a session with all its sockets open,
/// are "try again later" (1013).
fn refusal(e: ApiError) -> (ApiError, CloseCode) {
    let code = if matches!(
        e,
        ApiError::Unavailable(_) | ApiError::RateLimited(_) | ApiError::Quota { .. }
    ) {
        CloseCode::TryAgainLater
    } else {
        CloseCode::PolicyViolation
    };
    (e, code)
}

/// Reads the token of a socket opened with `?session=` from its first frame,
/// `{"type":"auth","token":…}`, which must come within `--auth-timeout-ms`.
/// A token in the URL is refused unless `--allow-url-token` (old clients).
/// Returns the query with the token in it; a socket that creates its
/// session has none to give.
async fn authenticate(
    state: &AppState,
    mut query: SocketQuery,
    stream: &mut SplitStream<WebSocket>,
) -> Result<SocketQuery, Refusal> {
    // In jwt mode every socket proves its user, also one that creates its
    // session.
    if query.session.is_none() && !auth::jwt_mode(state) {
        return Ok(query);
    }
    if query.token.is_some() {
        if state.config.allow_url_token && !auth::jwt_mode(state) {
            return Ok(query);
        }
        let e = ApiError::NoAuthFrame(
            "a token in the URL is refused: send {\"type\":\"auth\",\"token\":…} as the first frame".into(),
        );
        return Err((
            e,
            CloseCode::PolicyViolation,
            "send the token in an auth frame",
        ));
    }
    let no_auth = || {
        let e =
            ApiError::NoAuthFrame("the first frame must be {\"type\":\"auth\",\"token\":…}".into());
        (
            e,
            CloseCode::PolicyViolation,
            "expected an auth frame first",
        )
    };
    let first_text = async {
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Text(text)) => return Some(text),
                // The library answers pings; nothing else may come first.
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                _ => return None,
            }
        }
        None
    };
    let text = tokio::time::timeout(state.config.auth_timeout(), first_text)
        .await
        .map_err(|_| {
            let e = ApiError::NoAuthFrame("no auth frame in time".into());
            (e, CloseCode::PolicyViolation, "no auth frame in time")
        })?
        .ok_or_else(no_auth)?;
    match ClientFrame::parse(&text) {
        Ok(ClientFrame::Auth { token }) => {
            metrics::frame_in(ClientFrame::AUTH);
            query.token = Some(token);
            Ok(query)
        }
        _ => Err(no_auth()),
    }
}

/// Checks the token (or creates the session), subscribes to its live events,
/// then finds where replay starts: subscribing first means every event stored
/// after the replay read still arrives live.
async fn attach(state: &AppState, query: SocketQuery) -> Result<Attached, (ApiError, CloseCode)> {
    let after_seq = query
        .after_seq
        .as_deref()
        .map(replay::parse_after_seq)
        .transpose()
        .map_err(refusal)?;
    let token = query.token.as_ref().map(SessionToken::as_str);
    let mut user_feed = None;
    let (session, created_token, user) = match query.session.as_deref() {
        None if auth::jwt_mode(state) => {
            let user = users::authenticate(state, token).await.map_err(refusal)?;
            // Following the list first: the socket hears of its own session.
            user_feed = Some(follow_user(state, &user).await?);
            let session = users::create_session(state, &user).await.map_err(refusal)?;
            (session, None, Some(user))
        }
        None => {
            let (session, token) = auth::create_session(state).await.map_err(refusal)?;
            (session, Some(token), None)
        }
        Some(raw) => {
            let session = auth::parse_session_id(Some(raw)).map_err(refusal)?;
            let (_, user) = auth::check_token(state, session, token)
                .await
                .map_err(refusal)?;
            (session, None, user)
        }
    };
    if let (None, Some(user)) = (&user_feed, &user) {
        user_feed = Some(follow_user(state, user).await?);
    }
    let attachment = state.hub.attach(session).await.map_err(|e| {
        refusal(match e {
            AttachError::TooManySockets(_) => ApiError::RateLimited(e.to_string()),
            AttachError::Nats(e) => ApiError::nats(e),
        })
    })?;
    let events = SessionEvents::new(state.clone(), session);
    let position = events.position(after_seq).await.map_err(refusal)?;
    Ok(Attached {
        session,
        created_token,
        events,
        attachment,
        after_seq,
        position,
        user,
        user_feed,
    })
}

async fn follow_user(
    state: &AppState,
    user: &User,
) -> Result<UserAttachment, (ApiError, CloseCode)> {
    state
        .user_feeds
        .attach(&user.key)
        .await
        .map_err(|e| refusal(ApiError::nats(e)))
}

/// `ready`, then what the client missed.
async fn start(relay: &mut SocketRelay, state: &AppState, attached: &Attached) -> Result<(), End> {
    let ready = ControlFrame::Ready {
        session_id: attached.session,
        token: attached
            .created_token
            .as_ref()
            .map(|t| t.as_str().to_string()),
        node: state.node.clone(),
        last_seq: attached.position.last_seq,
    };
    relay.send_control(&ready).await?;
    if let Some(after) = attached.after_seq {
        relay.start_after(after, attached.position).await?;
    }
    Ok(())
}

/// The socket's loop: shutdown, the tail check, the reader's commands and
/// live events, each step ending with one flush.
async fn forward<S: Sink<Message> + Unpin>(
    relay: &mut Relay<S, SessionEvents>,
    state: &AppState,
    links: Links,
    mut inbox: mpsc::Receiver<Command>,
) -> End {
    let Links {
        mut attachment,
        mut user_feed,
        mut expiry,
        replayed,
    } = links;
    let user_revoked = user_feed.as_ref().map(|f| f.revoked.clone());
    let mut notices = user_feed.as_mut().map(|f| &mut f.receiver);
    let shutdown = state.shutdown.clone();
    let quiet = state.config.tail_check();
    // Armed by each live event, fired once when they go quiet; armed by a
    // starting replay too: a replica that had not caught up may have
    // answered its reads (its direct gets come back on before it has), and
    // an answer that is over sends no live event to reveal what it left out.
    let mut tail_check: Option<Instant> = replayed.then(|| Instant::now() + quiet);
    // A stored sequence this socket had not sent at the last tail check.
    let mut tail_suspect: Option<u64> = None;
    loop {
        let check_at = tail_check.unwrap_or_else(|| Instant::now() + quiet);
        let step = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return End::Close(CloseCode::ServiceRestart, "service restart"),
            _ = attachment.revoked.cancelled() => return End::Close(CloseCode::PolicyViolation, "session revoked"),
            _ = fired(user_revoked.as_ref()) => return End::Close(CloseCode::PolicyViolation, USER_REVOKED),
            _ = tokio::time::sleep_until(expiry.map_or_else(Instant::now, |e| e.at)), if expiry.is_some() => {
                return End::Close(CloseCode::PolicyViolation, TOKEN_EXPIRED);
            }
            _ = tokio::time::sleep_until(expiry.map_or_else(Instant::now, |e| e.warn_at)), if expiry.is_some_and(|e| !e.warned) => {
                let left = expiry.map_or(0, |e| e.at.saturating_duration_since(Instant::now()).as_millis());
                if let Some(e) = expiry.as_mut() {
                    e.warned = true;
                }
                let in_ms = u64::try_from(left).unwrap_or(u64::MAX);
                relay.send_control(&ControlFrame::TokenExpiring { in_ms }).await
            }
            notice = next_notice(notices.as_deref_mut()) => match notice {
                Ok(frame) => relay.send_control(&frame).await,
                // A missed notice leaves the list stale, not wrong: the next
                // change (or a reload) brings it up to date.
                Err(broadcast::error::RecvError::Lagged(_)) => Ok(()),
                Err(broadcast::error::RecvError::Closed) => {
                    notices = None;
                    Ok(())
                }
            },
            _ = tokio::time::sleep_until(check_at), if tail_check.is_some() => {
                tail_check = None;
                match Box::pin(relay.check_tail(tail_suspect.take())).await {
                    Ok(None) => Ok(()),
                    Ok(Some(suspect)) => {
                        tail_suspect = Some(suspect);
                        tail_check = Some(Instant::now() + quiet);
                        Ok(())
                    }
                    Err(end) => Err(end),
                }
            }
            command = inbox.recv() => match command {
                None => return End::Closed,
                Some(Command::Close(code, reason)) => return End::Close(code, reason),
                Some(Command::Control(frame)) => relay.send_control(&frame).await,
                Some(Command::Resume(after)) => Box::pin(relay.resume(after)).await,
                Some(Command::Refreshed(exp)) => {
                    expiry = Some(Expiry::of(exp, state.config.auth.token_expiring_ms));
                    Ok(())
                }
            },
            event = attachment.receiver.recv() => {
                tail_check = Some(Instant::now() + quiet);
                match event {
                    Ok(event) => match relay.live(&event).await {
                        Ok(()) => drain_ready(relay, &mut attachment).await,
                        Err(end) => Err(end),
                    },
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        fell_behind(skipped);
                        relay.catch_up(attachment.recent_after(relay.last_sent())).await
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return End::Close(CloseCode::TryAgainLater, "live feed ended");
                    }
                }
            }
        };
        // Everything this step queued leaves in as few writes as it takes.
        if let Err(end) = step {
            return end;
        }
        if let Err(end) = relay.flush().await {
            return end;
        }
    }
}

/// The close reason of a socket whose user's sockets were revoked.
pub const USER_REVOKED: &str = "user revoked";
/// The close reason of a socket whose token expired without a `refresh`.
pub const TOKEN_EXPIRED: &str = "token expired";

/// Waits for `token` to fire; never without one.
async fn fired(token: Option<&tokio_util::sync::CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The next session-list notice; never without a feed.
async fn next_notice(
    receiver: Option<&mut broadcast::Receiver<std::sync::Arc<ControlFrame>>>,
) -> Result<std::sync::Arc<ControlFrame>, broadcast::error::RecvError> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Queues the live events already waiting behind the one just sent (up to
/// a bound, so commands and shutdown are not starved), for one flush.
async fn drain_ready<S: Sink<Message> + Unpin>(
    relay: &mut Relay<S, SessionEvents>,
    attachment: &mut Attachment,
) -> Result<(), End> {
    for _ in 0..DRAIN_AT_ONCE {
        match attachment.receiver.try_recv() {
            Ok(event) => relay.live(&event).await?,
            Err(broadcast::error::TryRecvError::Lagged(skipped)) => {
                fell_behind(skipped);
                relay
                    .catch_up(attachment.recent_after(relay.last_sent()))
                    .await?;
            }
            Err(_) => break,
        }
    }
    Ok(())
}

/// The socket fell behind its session's ring: the fan-out does not wait for
/// anyone, so the ring moved on without it. What it missed comes from the
/// session's recent events, or the stream (see `Relay::catch_up`), at the
/// socket's own pace. A client that stops reading altogether is closed by
/// the write timeout instead.
fn fell_behind(skipped: u64) {
    tracing::debug!(
        skipped,
        "socket fell behind its live feed; catching up from its recent events"
    );
    metrics::caught_up();
}

/// A session's events after a point, replayed from the stream and then
/// live, each once and in order: a socket's relay without the socket, for
/// the other renderers of the same events (the AI SDK's SSE stream,
/// `ui_stream`). It attaches to the live feed before the stream's position
/// is read (or before the question it follows is stored), so nothing
/// stored in between is missed.
pub(crate) struct SessionFeed {
    events: SessionEvents,
    attachment: Attachment,
    start: FeedStart,
}

/// Where a [`SessionFeed`] starts.
enum FeedStart {
    /// The stored events after `after`, through `position`, then live.
    Replay { after: u64, position: Position },
    /// The event at `seq`, in hand as `frame`: stored after the feed
    /// attached, so every later event comes live (or, lost on the way, is
    /// revealed by its successor's `Nats-Last-Sequence` or the tail check,
    /// and read from the stream). No read of the stream to start.
    InHand { seq: u64, frame: String },
}

/// A feed attached to a session's live events, not yet started.
pub(crate) struct AttachedFeed {
    events: SessionEvents,
    attachment: Attachment,
}

impl AttachedFeed {
    /// The events after `after`: reads where the session's stream stands.
    pub(crate) async fn after(self, after: u64) -> Result<SessionFeed, ApiError> {
        let position = self.events.position(Some(after)).await?;
        Ok(SessionFeed {
            events: self.events,
            attachment: self.attachment,
            start: FeedStart::Replay { after, position },
        })
    }

    /// The events from the question `accepted` stored, which this feed
    /// attached before: nothing is read when the question was stored by
    /// that call (a retry's may have been answered before the attach).
    pub(crate) async fn starting_at_question(
        self,
        accepted: &crate::chat::Accepted,
    ) -> Result<SessionFeed, ApiError> {
        let in_hand = accepted
            .echo
            .as_ref()
            .and_then(|echo| protocol::frames::with_seq(echo, accepted.seq));
        match in_hand {
            Some(frame) => Ok(SessionFeed {
                events: self.events,
                attachment: self.attachment,
                start: FeedStart::InHand {
                    seq: accepted.seq,
                    frame,
                },
            }),
            None => self.after(accepted.seq.saturating_sub(1)).await,
        }
    }
}

impl SessionFeed {
    /// Attaches to `session`'s live events. Fails as an attach does: NATS
    /// trouble, or a session with all its sockets open (`rate_limited`).
    pub(crate) async fn attach(
        state: &AppState,
        session: SessionId,
    ) -> Result<AttachedFeed, ApiError> {
        let attachment = state.hub.attach(session).await.map_err(|e| match e {
            AttachError::TooManySockets(_) => ApiError::RateLimited(e.to_string()),
            AttachError::Nats(e) => ApiError::nats(e),
        })?;
        Ok(AttachedFeed {
            events: SessionEvents::new(state.clone(), session),
            attachment,
        })
    }

    /// Attaches to `session`'s live events and reads where its stream
    /// stands: the events after `after`.
    pub(crate) async fn open(
        state: &AppState,
        session: SessionId,
        after: u64,
    ) -> Result<Self, ApiError> {
        Self::attach(state, session).await?.after(after).await
    }

    /// Writes every event after the starting point to `sink` as a text
    /// frame (the same frames a socket gets), until the sink fails (its
    /// reader has what it wanted, or went away), the gateway shuts down (a
    /// close frame with 1012) or the relay fails (a close frame with 1013).
    pub(crate) async fn relay<S: Sink<Message> + Unpin>(self, state: AppState, sink: S) {
        let outbox = Outbox::new(sink, state.config.write_timeout());
        let replayed = matches!(self.start, FeedStart::Replay { .. });
        let (mut relay, started) = match self.start {
            FeedStart::Replay { after, position } => {
                let mut relay = Relay::new(outbox, self.events, after);
                let started = relay.start_after(after, position).await;
                (relay, started)
            }
            FeedStart::InHand { seq, frame } => {
                let mut relay = Relay::new(outbox, self.events, seq.saturating_sub(1));
                let started = relay.start_with(seq, frame).await;
                (relay, started)
            }
        };
        // No reader: nothing ever comes in, and the sender stays alive so
        // the loop never takes the inbox's end for the client's.
        let (_no_commands, inbox) = mpsc::channel(1);
        let started = match started {
            Ok(()) => relay.flush().await,
            Err(end) => Err(end),
        };
        let end = match started {
            Ok(()) => {
                let links = Links {
                    attachment: self.attachment,
                    user_feed: None,
                    expiry: None,
                    replayed,
                };
                forward(&mut relay, &state, links, inbox).await
            }
            Err(end) => end,
        };
        relay.end(end).await;
    }
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    #[test]
    fn any_exp_a_token_carries_makes_an_expiry() {
        for (exp, warn_before) in [(u64::MAX, u64::MAX), (0, 0), (1, u64::MAX)] {
            let expiry = Expiry::of(exp, warn_before);
            assert!(expiry.warn_at <= expiry.at);
        }
        let now_secs = protocol::now_ms() / 1000;
        let soon = Expiry::of(now_secs + 60, 30_000);
        let left = soon.at.saturating_duration_since(Instant::now());
        assert!(left <= std::time::Duration::from_secs(60), "{left:?}");
        assert!(
            soon.at.saturating_duration_since(soon.warn_at) <= std::time::Duration::from_secs(30)
        );
    }
}
