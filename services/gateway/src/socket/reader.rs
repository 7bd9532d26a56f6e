//! The client's frames in: read, rate-limited (a token bucket per socket),
//! parsed, and acted on; what the client is to be told goes to the relay as
//! a [`Command`], so every frame out still leaves in order from one place.

use axum::extract::ws::{Message, WebSocket};
use futures::stream::SplitStream;
use futures::StreamExt;
use protocol::frames::{ClientFrame, ControlFrame};
use protocol::{CloseCode, ErrorCode, SessionId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::app::AppState;
use crate::chat::{self, ChatInput};
use crate::error::ApiError;
use crate::metrics;
use crate::regenerate::{self, RegenerateInput};

/// What the reader asks of the relay.
pub(super) enum Command {
    /// Send this frame.
    Control(ControlFrame),
    /// The client's `resume` frame.
    Resume(u64),
    /// A `refresh` frame's token was accepted: it expires at this `exp`.
    Refreshed(u64),
    /// Close the socket.
    Close(CloseCode, &'static str),
}

/// Reads the client's frames, rate-limits them, and acts on them.
pub(super) async fn read(
    mut stream: SplitStream<WebSocket>,
    state: AppState,
    session: SessionId,
    user: Option<protocol::UserKey>,
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
                    if code == CloseCode::TooBig {
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
            ClientFrame::Auth { .. } => {
                let e = ApiError::BadRequest("this socket is authenticated already".into());
                Command::Control(e.frame(None))
            }
            ClientFrame::Resume { after_seq } => Command::Resume(after_seq),
            ClientFrame::Refresh { token } => refresh(&state, user.as_ref(), token.as_str()).await,
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
                    checked_record: None,
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
            ClientFrame::Regenerate {
                message_id,
                replaces,
                model,
            } => {
                let span = tracing::info_span!(
                    "chat.regenerate",
                    otel.name = "chat.regenerate",
                    session_id = %session
                );
                let input = RegenerateInput {
                    message_id,
                    replaces,
                    model,
                };
                match Box::pin(regenerate::regenerate(&state, session, input).instrument(span))
                    .await
                {
                    Ok(accepted) => Command::Control(ControlFrame::Accepted {
                        message_id: accepted.message_id,
                        seq: accepted.seq,
                    }),
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

/// A `refresh` frame: a valid token of the socket's own user moves its
/// expiry; anything else is refused and the socket keeps its old expiry.
async fn refresh(state: &AppState, user: Option<&protocol::UserKey>, token: &str) -> Command {
    let Some(user) = user else {
        let e = ApiError::BadRequest("refresh is for GATEWAY_AUTH=jwt sockets".into());
        return Command::Control(e.frame(None));
    };
    match Box::pin(crate::users::authenticate(state, Some(token))).await {
        Ok(refreshed) if &refreshed.key == user => Command::Refreshed(refreshed.claims.exp),
        Ok(_) | Err(_) => Command::Control(ApiError::Unauthorized.frame(None)),
    }
}

/// The close a read error calls for, if any. axum hides tungstenite's error
/// type, so it is recognised by its text.
fn close_for_read_error(e: &axum::Error) -> Option<(CloseCode, &'static str)> {
    let text = e.to_string();
    if text.contains("Space limit exceeded") || text.contains("too long") {
        Some((CloseCode::TooBig, "message too big"))
    } else if text.contains("UTF-8") {
        Some((CloseCode::InvalidData, "invalid UTF-8"))
    } else if text.contains("protocol error") {
        Some((CloseCode::ProtocolError, "protocol error"))
    } else {
        None
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
