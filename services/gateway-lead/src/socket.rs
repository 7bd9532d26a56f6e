//! One WebSocket connection: authentication, `ready`, replay, live events
//! with gap repair, the client's frames, and the ways a socket ends (slow
//! client 1013, bad token 1008, oversize 1009, shutdown 1012).
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

const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_RESTART: u16 = 1012;
const CLOSE_TRY_LATER: u16 = 1013;

/// Commands from the reader (and the attach step) to the relay.
enum Command {
    Control(ControlFrame),
    Resume(u64),
    Close(u16, &'static str),
}

/// How a socket's relay ended.
enum End {
    Closed,
    Close(u16, &'static str),
}

/// Serves one upgraded socket until it ends.
pub async fn serve(socket: WebSocket, state: AppState, query: HashMap<String, String>) {
    metrics::connection_opened();
    let span = tracing::info_span!("ws.connection", node = %state.node, session_id = tracing::field::Empty);
    run(socket, state, query).instrument(span).await;
    metrics::connection_closed();
}

async fn run(socket: WebSocket, state: AppState, query: HashMap<String, String>) {
    let (mut sink, stream) = socket.split();
    let attached = match attach(&state, &query).await {
        Ok(attached) => attached,
        Err((error, close)) => {
            metrics::error(error.code());
            let _ = send_text(
                &mut sink,
                error.frame(None).to_json().into(),
                state.config.write_timeout(),
            )
            .await;
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: close,
                    reason: Utf8Bytes::from_static("refused"),
                })))
                .await;
            return;
        }
    };
    tracing::Span::current().record("session_id", tracing::field::display(attached.session));
    sessions::touch(&state, attached.session).await;

    let (commands, inbox) = mpsc::channel(64);
    let reader =
        tokio::spawn(read(stream, state.clone(), attached.session, commands).in_current_span());
    let relay = Relay {
        state: state.clone(),
        session: attached.session,
        last_sent: attached.start_from,
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
    start_from: u64,
}

/// Authenticates (or creates) the session, subscribes to its live events,
/// and finds where replay starts. Errors come with the close code to use.
async fn attach(
    state: &AppState,
    query: &HashMap<String, String>,
) -> Result<Attached, (ApiError, u16)> {
    let after_seq = match query.get("after_seq") {
        None => None,
        Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
            (
                ApiError::BadRequest(format!(
                    "after_seq must be a non-negative integer, not {raw:?}"
                )),
                CLOSE_POLICY,
            )
        })?),
    };
    let (session, created_token) = match query.get("session") {
        None => {
            let (session, token) = sessions::create(state)
                .await
                .map_err(|e| (e, CLOSE_TRY_LATER))?;
            (session, Some(token))
        }
        Some(raw) => {
            let session = sessions::parse_id(Some(raw)).map_err(|e| (e, CLOSE_POLICY))?;
            sessions::authenticate(state, session, query.get("token").map(String::as_str))
                .await
                .map_err(|e| {
                    let code = if matches!(e, ApiError::Unavailable(_)) {
                        CLOSE_TRY_LATER
                    } else {
                        CLOSE_POLICY
                    };
                    (e, code)
                })?;
            (session, None)
        }
    };
    // Subscribe first: from here on every stored event also arrives live.
    let attachment = state
        .hub
        .attach(session)
        .await
        .map_err(|e| (ApiError::nats(e), CLOSE_TRY_LATER))?;
    let position = replay::position(state, session, after_seq)
        .await
        .map_err(|e| {
            let code = if matches!(e, ApiError::Unavailable(_)) {
                CLOSE_TRY_LATER
            } else {
                CLOSE_POLICY
            };
            (e, code)
        })?;
    let start_from = after_seq.unwrap_or(position.last_seq);
    Ok(Attached {
        session,
        created_token,
        attachment,
        after_seq,
        position,
        start_from,
    })
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
                refuse(
                    &commands,
                    ErrorCode::BadRequest,
                    "binary frames are not accepted; send JSON text",
                )
                .await;
                continue;
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => continue, // ping / pong: the library answers pings
            Err(e) => {
                let reason = e.to_string();
                if reason.contains("too long") || reason.contains("too big") {
                    metrics::error(ErrorCode::TooLarge);
                    let _ = commands
                        .send(Command::Close(CLOSE_TOO_BIG, "message too big"))
                        .await;
                }
                break;
            }
        };
        if !bucket.take(Instant::now()) {
            metrics::error(ErrorCode::RateLimited);
            let frame = ControlFrame::error(ErrorCode::RateLimited, "too many frames; slow down");
            // Never wait on a flooding client's replies.
            let _ = commands.try_send(Command::Control(frame));
            continue;
        }
        let frame = match ClientFrame::parse(&text) {
            Ok(frame) => frame,
            Err(message) => {
                refuse(&commands, ErrorCode::BadRequest, &message).await;
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
                let span = tracing::info_span!("chat.submit", otel.name = "chat.submit", session_id = %session, message_id = tracing::field::Empty);
                let input = ChatInput {
                    message_id,
                    content,
                    model,
                };
                match chat::submit(&state, session, input)
                    .instrument(span.clone())
                    .await
                {
                    Ok(accepted) => {
                        span.record("message_id", tracing::field::display(accepted.message_id));
                        Command::Control(ControlFrame::Accepted {
                            message_id: accepted.message_id,
                            seq: accepted.seq,
                        })
                    }
                    Err(e) => {
                        metrics::error(e.code());
                        Command::Control(e.frame(message_id))
                    }
                }
            }
            ClientFrame::Cancel { message_id } => {
                match chat::cancel(&state, session, message_id).await {
                    Ok(()) => continue,
                    Err(e) => {
                        metrics::error(e.code());
                        Command::Control(e.frame(Some(message_id)))
                    }
                }
            }
        };
        if commands.send(reply).await.is_err() {
            break;
        }
    }
}

async fn refuse(commands: &mpsc::Sender<Command>, code: ErrorCode, message: &str) {
    metrics::error(code);
    let _ = commands
        .send(Command::Control(ControlFrame::error(code, message)))
        .await;
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
        Self {
            rate: rate.max(0.0),
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
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
    /// after): live events at or below it are duplicates; an event whose
    /// predecessor is above it reveals a gap.
    last_sent: u64,
    sink: SplitSink<WebSocket, Message>,
}

impl Relay {
    async fn run(mut self, attached: Attached, mut inbox: mpsc::Receiver<Command>) {
        let end = match self.start(&attached).await {
            Ok(()) => self.forward(attached.attachment, &mut inbox).await,
            Err(end) => end,
        };
        if let End::Close(code, reason) = end {
            if code == CLOSE_TRY_LATER {
                metrics::slow_client_closed();
            }
            let close = Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }));
            let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.send(close)).await;
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
            let from = if attached.position.expired {
                for frame in
                    replay::expired_notice(&self.state, self.session, attached.position.last_seq)
                        .await
                        .map_err(|_| End::Close(CLOSE_TRY_LATER, "replay failed"))?
                {
                    self.send_control(&frame).await?;
                }
                attached.position.first_available
            } else {
                after + 1
            };
            self.last_sent = after;
            self.replay(from, attached.position.last_seq).await?;
        }
        Ok(())
    }

    async fn forward(
        &mut self,
        mut attachment: Attachment,
        inbox: &mut mpsc::Receiver<Command>,
    ) -> End {
        let shutdown = self.state.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Close(CLOSE_RESTART, "service restart"),
                command = inbox.recv() => match command {
                    None => return End::Closed,
                    Some(Command::Close(code, reason)) => return End::Close(code, reason),
                    Some(Command::Control(frame)) => {
                        if let Err(end) = self.send_control(&frame).await { return end; }
                    }
                    Some(Command::Resume(after)) => {
                        if let Err(end) = self.resume(after).await { return end; }
                    }
                },
                event = attachment.receiver.recv() => match event {
                    Ok(event) => {
                        if let Err(end) = self.live(&event).await { return end; }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return End::Close(CLOSE_TRY_LATER, "slow consumer: reconnect with after_seq");
                    }
                    Err(broadcast::error::RecvError::Closed) => return End::Close(CLOSE_TRY_LATER, "live feed ended"),
                },
            }
        }
    }

    async fn live(&mut self, event: &LiveEvent) -> Result<(), End> {
        if event.seq <= self.last_sent {
            return Ok(());
        }
        if event.prev > self.last_sent {
            // A live message went missing (a slow-consumer drop): fill the
            // hole from the stream before anything after it.
            metrics::gap_repaired();
            let from = self.last_sent + 1;
            self.replay(from, event.seq - 1).await?;
        }
        self.send_text(
            event.frame.clone(),
            if event.is_chunk { "chunk" } else { "event" },
        )
        .await?;
        if event.is_chunk {
            metrics::chunk_forwarded();
        }
        self.last_sent = event.seq;
        Ok(())
    }

    async fn resume(&mut self, after: u64) -> Result<(), End> {
        let position = match replay::position(&self.state, self.session, Some(after)).await {
            Ok(position) => position,
            Err(e) => {
                metrics::error(e.code());
                return self.send_control(&e.frame(None)).await;
            }
        };
        metrics::replay_started();
        let from = if position.expired {
            match replay::expired_notice(&self.state, self.session, position.last_seq).await {
                Ok(frames) => {
                    for frame in frames {
                        self.send_control(&frame).await?;
                    }
                }
                Err(e) => return self.send_control(&e.frame(None)).await,
            }
            position.first_available
        } else {
            after + 1
        };
        // An explicit resume re-sends from `after` even what this socket
        // already sent: the client asked for it.
        self.replay_all(from, position.last_seq).await?;
        self.last_sent = self.last_sent.max(position.last_seq);
        Ok(())
    }

    /// Sends stored events in `[from, until]` above `last_sent`.
    async fn replay(&mut self, from: u64, until: u64) -> Result<(), End> {
        if until < from {
            return Ok(());
        }
        let frames = replay::frames(&self.state, self.session, from, until)
            .await
            .map_err(|_| End::Close(CLOSE_TRY_LATER, "replay failed; reconnect with after_seq"))?;
        for (seq, frame) in frames {
            if seq <= self.last_sent {
                continue;
            }
            self.send_text(frame.into(), "event").await?;
            self.last_sent = seq;
        }
        Ok(())
    }

    async fn replay_all(&mut self, from: u64, until: u64) -> Result<(), End> {
        if until < from {
            return Ok(());
        }
        let frames = replay::frames(&self.state, self.session, from, until)
            .await
            .map_err(|_| End::Close(CLOSE_TRY_LATER, "replay failed; reconnect with after_seq"))?;
        for (seq, frame) in frames {
            self.send_text(frame.into(), "event").await?;
            self.last_sent = self.last_sent.max(seq);
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

    async fn send_text(&mut self, text: Utf8Bytes, kind: &'static str) -> Result<(), End> {
        match send_text(&mut self.sink, text, self.state.config.write_timeout()).await {
            Ok(()) => {
                metrics::frames_out(kind, 1);
                Ok(())
            }
            Err(SendFailed::TimedOut) => Err(End::Close(
                CLOSE_TRY_LATER,
                "slow consumer: reconnect with after_seq",
            )),
            Err(SendFailed::Gone) => Err(End::Closed),
        }
    }
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
