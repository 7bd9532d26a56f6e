//! One WebSocket connection: authentication, `ready`, replay, live events
//! with gap repair, the client's frames, and the ways a socket ends (bad
//! token 1008, invalid UTF-8 1007, oversize 1009, shutdown 1012, a client
//! whose writes block for the write timeout 1013). A client that merely
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
//! Two tasks per socket: a reader that parses and rate-limits the client's
//! frames, and a relay that owns the write half and everything sent, so the
//! order of frames and the `last_sent` bookkeeping live in one place.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use protocol::frames::{ClientFrame, ControlFrame};
use protocol::{ErrorCode, SessionId, SessionToken};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tracing::Instrument;

use crate::app::AppState;
use crate::chat::{self, ChatInput};
use crate::error::ApiError;
use crate::live::{Attachment, LiveEvent};
use crate::{metrics, replay, sessions};

pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_RESTART: u16 = 1012;
pub const CLOSE_TRY_LATER: u16 = 1013;

/// The close reason of a socket that fell too far behind.
const SLOW_CONSUMER: &str = "slow consumer";

/// Reads of a known hole before the socket is given up, and the pause
/// before each retry (times the attempt).
const REPAIR_ATTEMPTS: u32 = 4;
const REPAIR_RETRY: Duration = Duration::from_millis(20);

/// Live events queued for one write at most, before the relay looks at
/// its other inputs again.
const DRAIN_AT_ONCE: usize = 64;

/// Commands from the reader to the relay. Bounded: a client that floods
/// while its socket is slow waits on itself, never on anyone else.
const COMMAND_QUEUE: usize = 64;

enum Command {
    Control(ControlFrame),
    Resume(u64),
    Close(u16, &'static str),
}

/// How a socket's relay ended.
enum End {
    /// The client went away (or closed): nothing more to send.
    Closed,
    Close(u16, &'static str),
}

/// Serves one upgraded socket until it ends.
pub async fn serve(socket: WebSocket, state: AppState, query: HashMap<String, String>) {
    metrics::connection_opened();
    let span = tracing::info_span!(
        "ws.connection",
        node = %state.node,
        session_id = tracing::field::Empty
    );
    run(socket, state, query).instrument(span).await;
    metrics::connection_closed();
}

async fn run(socket: WebSocket, state: AppState, query: HashMap<String, String>) {
    let (mut sink, stream) = socket.split();
    let write_timeout = state.config.write_timeout();
    // Cold paths are boxed: an async fn's future is as large as the largest
    // future it awaits inline, and ten thousand idle sockets would each
    // carry the room that only attaching, replaying or submitting need.
    let attached = match Box::pin(attach(&state, &query)).await {
        Ok(attached) => attached,
        Err((error, close)) => {
            // The error frame says why; the close code is what a client acts on.
            let frame = error.frame(None).to_json();
            let _ = send_text(&mut sink, frame.into(), write_timeout).await;
            let _ = send_close(&mut sink, close, "refused", write_timeout).await;
            return;
        }
    };
    tracing::Span::current().record("session_id", tracing::field::display(attached.session));
    Box::pin(sessions::touch(&state, attached.session)).await;

    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    let reader =
        tokio::spawn(read(stream, state.clone(), attached.session, commands).in_current_span());
    let relay = Relay {
        state: state.clone(),
        session: attached.session,
        last_sent: attached.start_after,
        sink,
    };
    relay.run(attached, inbox).await;
    reader.abort();
}

struct Attached {
    session: SessionId,
    created_token: Option<SessionToken>,
    attachment: Attachment,
    after_seq: Option<u64>,
    position: replay::Position,
    /// What counts as already sent when live forwarding starts.
    start_after: u64,
}

/// The close code for a refused attach: the client's fault is a policy
/// violation (1008); NATS trouble is "try again later" (1013).
fn refusal(e: ApiError) -> (ApiError, u16) {
    let code = if matches!(e, ApiError::Unavailable(_)) {
        CLOSE_TRY_LATER
    } else {
        CLOSE_POLICY
    };
    (e, code)
}

/// Authenticates (or creates) the session, subscribes to its live events,
/// then finds where replay starts: subscribing first means every event stored
/// after the replay read still arrives live.
async fn attach(
    state: &AppState,
    query: &HashMap<String, String>,
) -> Result<Attached, (ApiError, u16)> {
    let after_seq = match query.get("after_seq") {
        None => None,
        Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
            refusal(ApiError::BadRequest(format!(
                "after_seq must be a non-negative integer, not {:?}",
                raw.chars().take(32).collect::<String>()
            )))
        })?),
    };
    let (session, created_token) = match query.get("session") {
        None => {
            let (session, token) = sessions::create(state).await.map_err(refusal)?;
            (session, Some(token))
        }
        Some(raw) => {
            let session = sessions::parse_id(Some(raw)).map_err(refusal)?;
            sessions::authenticate(state, session, query.get("token").map(String::as_str))
                .await
                .map_err(refusal)?;
            (session, None)
        }
    };
    let attachment = state
        .hub
        .attach(session)
        .await
        .map_err(|e| refusal(ApiError::nats(e)))?;
    let position = replay::position(state, session, after_seq)
        .await
        .map_err(refusal)?;
    Ok(Attached {
        session,
        created_token,
        attachment,
        after_seq,
        position,
        start_after: after_seq.unwrap_or(position.last_seq),
    })
}

/// The close a read error calls for, if any. axum hides tungstenite's error
/// type, so it is recognised by its text.
fn close_for_read_error(e: &axum::Error) -> Option<(u16, &'static str)> {
    let text = e.to_string();
    if text.contains("Space limit exceeded") || text.contains("too long") {
        Some((CLOSE_TOO_BIG, "message too big"))
    } else if text.contains("UTF-8") {
        Some((CLOSE_INVALID_DATA, "invalid UTF-8"))
    } else if text.contains("protocol error") {
        Some((CLOSE_PROTOCOL, "protocol error"))
    } else {
        None
    }
}

/// Reads the client's frames, rate-limits them, and acts on them.
async fn read(
    mut stream: SplitStream<WebSocket>,
    state: AppState,
    session: SessionId,
    commands: mpsc::Sender<Command>,
) {
    let mut bucket = TokenBucket::new(state.config.frames_per_sec, state.config.frame_burst);
    while let Some(message) = stream.next().await {
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Binary(_)) => {
                if !bucket.take(Instant::now()) {
                    rate_limited(&commands);
                    continue;
                }
                let e =
                    ApiError::BadRequest("binary frames are not accepted; send JSON text".into());
                let _ = commands.send(Command::Control(e.frame(None))).await;
                continue;
            }
            Ok(Message::Close(_)) => break,
            // Pings are answered by the library; pongs need nothing.
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "socket read failed");
                if let Some((code, reason)) = close_for_read_error(&e) {
                    if code == CLOSE_TOO_BIG {
                        metrics::error(ErrorCode::TooLarge);
                    } else {
                        metrics::error(ErrorCode::BadRequest);
                    }
                    let _ = commands.send(Command::Close(code, reason)).await;
                }
                break;
            }
        };
        if !bucket.take(Instant::now()) {
            rate_limited(&commands);
            continue;
        }
        let frame = match ClientFrame::parse(&text) {
            Ok(frame) => frame,
            Err(message) => {
                let e = ApiError::BadRequest(message);
                let _ = commands.send(Command::Control(e.frame(None))).await;
                continue;
            }
        };
        metrics::frame_in(frame.kind());
        let reply = match frame {
            ClientFrame::Ping => Command::Control(ControlFrame::Pong),
            ClientFrame::Resume { after_seq } => Command::Resume(after_seq),
            ClientFrame::Chat {
                message_id,
                content,
                model,
            } => {
                let span = tracing::info_span!(
                    "chat.submit",
                    otel.name = "chat.submit",
                    session_id = %session,
                    message_id = tracing::field::Empty
                );
                let input = ChatInput {
                    message_id,
                    content,
                    model,
                };
                match Box::pin(chat::submit(&state, session, input).instrument(span.clone())).await
                {
                    Ok(accepted) => {
                        span.record("message_id", tracing::field::display(accepted.message_id));
                        Command::Control(ControlFrame::Accepted {
                            message_id: accepted.message_id,
                            seq: accepted.seq,
                        })
                    }
                    Err(e) => Command::Control(e.frame(message_id)),
                }
            }
            ClientFrame::Cancel { message_id } => {
                match Box::pin(chat::cancel(&state, session, message_id)).await {
                    // A cancel is answered by the `cancelled` event, not a frame.
                    Ok(()) => continue,
                    Err(e) => Command::Control(e.frame(Some(message_id))),
                }
            }
        };
        if commands.send(reply).await.is_err() {
            break;
        }
    }
}

/// Tells a flooding client to slow down, without ever waiting on it: if its
/// queue is full, the notice is dropped (it has been told already).
fn rate_limited(commands: &mpsc::Sender<Command>) {
    let e = ApiError::RateLimited("too many frames; slow down".into());
    let _ = commands.try_send(Command::Control(e.frame(None)));
}

/// Frames a client may send: `rate` per second, `burst` at once.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> Self {
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        Self {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Owns the write half: every frame the client gets passes here, in order.
struct Relay {
    state: AppState,
    session: SessionId,
    /// The highest sequence this socket has sent (or the point it starts
    /// after): a live event at or below it is a duplicate; one whose
    /// predecessor is above it reveals a gap.
    last_sent: u64,
    sink: SplitSink<WebSocket, Message>,
}

impl Relay {
    async fn run(mut self, attached: Attached, mut inbox: mpsc::Receiver<Command>) {
        let started = match Box::pin(self.start(&attached)).await {
            Ok(()) => self.flush().await,
            Err(end) => Err(end),
        };
        let end = match started {
            Ok(()) => self.forward(attached.attachment, &mut inbox).await,
            Err(end) => end,
        };
        if let End::Close(code, reason) = end {
            if code == CLOSE_TRY_LATER && reason == SLOW_CONSUMER {
                metrics::slow_client_closed();
            }
            let timeout = self.state.config.write_timeout();
            let _ = send_close(&mut self.sink, code, reason, timeout).await;
        }
    }

    /// `ready`, then what the client missed.
    async fn start(&mut self, attached: &Attached) -> Result<(), End> {
        let ready = ControlFrame::Ready {
            session_id: attached.session,
            token: attached
                .created_token
                .as_ref()
                .map(|t| t.as_str().to_string()),
            node: self.state.node.clone(),
            last_seq: attached.position.last_seq,
        };
        self.send_control(&ready).await?;
        if let Some(after) = attached.after_seq {
            metrics::replay_started();
            let position = attached.position;
            let from = if position.expired {
                let notice = replay::expired_notice(&self.state, self.session, position.last_seq)
                    .await
                    .map_err(|_| End::Close(CLOSE_TRY_LATER, "replay failed"))?;
                for frame in &notice {
                    self.send_control(frame).await?;
                }
                position.first_available
            } else {
                after.saturating_add(1)
            };
            self.last_sent = after;
            self.replay(from, position.last_seq).await?;
        }
        Ok(())
    }

    async fn forward(
        &mut self,
        mut attachment: Attachment,
        inbox: &mut mpsc::Receiver<Command>,
    ) -> End {
        let shutdown = self.state.shutdown.clone();
        let quiet = self.state.config.tail_check();
        // Armed by each live event, fired once when they go quiet.
        let mut tail_check: Option<Instant> = None;
        // A stored sequence this socket had not sent at the last tail check.
        let mut tail_suspect: Option<u64> = None;
        loop {
            let check_at = tail_check.unwrap_or_else(|| Instant::now() + quiet);
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Close(CLOSE_RESTART, "service restart"),
                _ = tokio::time::sleep_until(check_at), if tail_check.is_some() => {
                    tail_check = None;
                    match Box::pin(self.check_tail(tail_suspect.take())).await {
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
                    Some(Command::Control(frame)) => self.send_control(&frame).await,
                    Some(Command::Resume(after)) => Box::pin(self.resume(after)).await,
                },
                event = attachment.receiver.recv() => {
                    tail_check = Some(Instant::now() + quiet);
                    match event {
                        Ok(event) => match self.live(&event).await {
                            Ok(()) => self.drain_ready(&mut attachment).await,
                            Err(end) => Err(end),
                        },
                        Err(broadcast::error::RecvError::Lagged(skipped)) => {
                            fell_behind(skipped);
                            self.catch_up(&attachment).await
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            return End::Close(CLOSE_TRY_LATER, "live feed ended");
                        }
                    }
                }
            };
            // Everything this step queued leaves in as few writes as it takes.
            if let Err(end) = step {
                return end;
            }
            if let Err(end) = self.flush().await {
                return end;
            }
        }
    }

    /// After falling behind the ring: the session's recent events after
    /// `last_sent` (`live` reads the stream for any older hole). The ring's
    /// copies of them, still to come, are then dropped as duplicates.
    async fn catch_up(&mut self, attachment: &Attachment) -> Result<(), End> {
        for event in attachment.recent_after(self.last_sent) {
            self.live(&event).await?;
        }
        Ok(())
    }

    /// Queues the live events already waiting behind the one just sent (up
    /// to a bound, so commands and shutdown are not starved), for one flush.
    async fn drain_ready(&mut self, attachment: &mut Attachment) -> Result<(), End> {
        for _ in 0..DRAIN_AT_ONCE {
            match attachment.receiver.try_recv() {
                Ok(event) => self.live(&event).await?,
                Err(broadcast::error::TryRecvError::Lagged(skipped)) => {
                    fell_behind(skipped);
                    self.catch_up(attachment).await?;
                }
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// One live event: drop a duplicate, fill a gap from the stream, send.
    async fn live(&mut self, event: &LiveEvent) -> Result<(), End> {
        if event.seq <= self.last_sent {
            return Ok(());
        }
        if event.prev > self.last_sent {
            // Live messages went missing (a slow-consumer drop between NATS
            // and this gateway, or this socket fell a ring behind): fill the
            // hole before anything after it.
            metrics::gap_repaired();
            Box::pin(self.repair_through(event.prev)).await?;
        }
        self.send_text(event.frame.clone(), event.kind).await?;
        if event.kind == "chunk" {
            metrics::chunk_forwarded();
        }
        self.last_sent = event.seq;
        Ok(())
    }

    /// Sends every stored event up to `through`, which is known to exist.
    /// A direct get may reach a replica that has not applied it yet, so a
    /// short read is retried; if it stays short the socket is closed and
    /// the client resumes, rather than skipping anything.
    async fn repair_through(&mut self, through: u64) -> Result<(), End> {
        for attempt in 0..REPAIR_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(REPAIR_RETRY * attempt).await;
            }
            let from = self.last_sent + 1;
            self.replay(from, through).await?;
            if self.last_sent >= through {
                return Ok(());
            }
        }
        Err(End::Close(
            CLOSE_TRY_LATER,
            "replay incomplete; reconnect with after_seq",
        ))
    }

    /// Once live events go quiet: anything stored after `last_sent` may
    /// have been lost on the way (the last event of an answer has no
    /// successor whose `Nats-Last-Sequence` would reveal it). Under load it
    /// is more often still on its way, so the first sighting only returns
    /// it as a suspect; if the next quiet period ends with it still unsent,
    /// it is read from the stream. One cheap read per quiet period, never
    /// per event.
    async fn check_tail(&mut self, suspect: Option<u64>) -> Result<Option<u64>, End> {
        let subject = protocol::subjects::events(self.session);
        let last = match protocol::stored::last_seq(&self.state.layout.events, &subject).await {
            Ok(last) => last,
            Err(e) => {
                tracing::debug!(error = %e, "tail check failed");
                return Ok(None);
            }
        };
        if last <= self.last_sent {
            return Ok(None);
        }
        match suspect {
            Some(seen) if seen > self.last_sent => {
                metrics::gap_repaired();
                let from = self.last_sent + 1;
                self.replay(from, last).await?;
                Ok(None)
            }
            _ => Ok(Some(last)),
        }
    }

    /// The `resume` frame: replay everything after `after`, even what this
    /// socket sent already (the client asked for it), then carry on live.
    async fn resume(&mut self, after: u64) -> Result<(), End> {
        let position = match replay::position(&self.state, self.session, Some(after)).await {
            Ok(position) => position,
            Err(e) => return self.send_control(&e.frame(None)).await,
        };
        metrics::replay_started();
        let from = if position.expired {
            match replay::expired_notice(&self.state, self.session, position.last_seq).await {
                Ok(notice) => {
                    for frame in &notice {
                        self.send_control(frame).await?;
                    }
                }
                Err(e) => return self.send_control(&e.frame(None)).await,
            }
            position.first_available
        } else {
            after.saturating_add(1)
        };
        let frames = match replay::frames(&self.state, self.session, from, position.last_seq).await
        {
            Ok(frames) => frames,
            Err(e) => return self.send_control(&e.frame(None)).await,
        };
        for (seq, frame) in frames {
            let kind = crate::live::event_kind(frame.as_bytes());
            self.send_text(frame.into(), kind).await?;
            self.last_sent = self.last_sent.max(seq);
        }
        // Live events up to the session's last (read after the live feed
        // existed) were covered by the replay.
        self.last_sent = self.last_sent.max(position.last_seq);
        Ok(())
    }

    /// Sends stored events in `[from, until]` above `last_sent`.
    async fn replay(&mut self, from: u64, until: u64) -> Result<(), End> {
        let frames = replay::frames(&self.state, self.session, from, until)
            .await
            .map_err(|_| End::Close(CLOSE_TRY_LATER, "replay failed; reconnect with after_seq"))?;
        for (seq, frame) in frames {
            if seq <= self.last_sent {
                continue;
            }
            let kind = crate::live::event_kind(frame.as_bytes());
            self.send_text(frame.into(), kind).await?;
            self.last_sent = seq;
        }
        Ok(())
    }

    async fn send_control(&mut self, frame: &ControlFrame) -> Result<(), End> {
        let kind = match frame {
            ControlFrame::Ready { .. } => "ready",
            ControlFrame::Accepted { .. } => "accepted",
            ControlFrame::Error { .. } => "error",
            ControlFrame::History { .. } => "history",
            ControlFrame::Pong => "pong",
        };
        self.send_text(frame.to_json().into(), kind).await
    }

    /// Queues a frame: it leaves with the next [`Self::flush`], or earlier
    /// when the socket's write buffer fills. Bounded in time like a send.
    async fn send_text(&mut self, text: Utf8Bytes, kind: &'static str) -> Result<(), End> {
        let queued = tokio::time::timeout(
            self.state.config.write_timeout(),
            self.sink.feed(Message::Text(text)),
        )
        .await;
        match queued {
            Ok(Ok(())) => {
                metrics::frames_out(kind, 1);
                Ok(())
            }
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(End::Close(CLOSE_TRY_LATER, SLOW_CONSUMER)),
        }
    }

    /// Writes out every queued frame.
    async fn flush(&mut self) -> Result<(), End> {
        match tokio::time::timeout(self.state.config.write_timeout(), self.sink.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(End::Close(CLOSE_TRY_LATER, SLOW_CONSUMER)),
        }
    }
}

/// The socket fell behind its session's ring: the fan-out does not wait for
/// anyone, so the ring moved on without it. What it missed comes from the
/// session's recent events, or the stream (see `Relay::catch_up`), at the
/// socket's own pace. A client that stops reading altogether is closed by
/// the write timeout instead.
fn fell_behind(skipped: u64) {
    tracing::debug!(
        skipped,
        "socket fell behind its live feed; catching up from the stream"
    );
    metrics::caught_up_from_stream();
}

enum SendFailed {
    TimedOut,
    Gone,
}

/// One write, bounded in time: a client that stops reading must not hold
/// its socket's relay (and its buffered events) for ever.
async fn send_text(
    sink: &mut SplitSink<WebSocket, Message>,
    text: Utf8Bytes,
    timeout: Duration,
) -> Result<(), SendFailed> {
    match tokio::time::timeout(timeout, sink.send(Message::Text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SendFailed::Gone),
        Err(_) => Err(SendFailed::TimedOut),
    }
}

async fn send_close(
    sink: &mut SplitSink<WebSocket, Message>,
    code: u16,
    reason: &'static str,
    timeout: Duration,
) -> Result<(), SendFailed> {
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }));
    match tokio::time::timeout(timeout, sink.send(close)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SendFailed::Gone),
        Err(_) => Err(SendFailed::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0);
        bucket.at = start;
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(110)));
        assert!(!bucket.take(start + Duration::from_millis(110)));
    }
}
