//! The write half of a socket, every write bounded in time: a client that
//! stops reading must not hold its socket's relay (and the events it
//! buffers) for ever. Generic over the sink so the relay can be tested
//! with a `Vec`.

use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures::{Sink, SinkExt};
use protocol::CloseCode;

use super::End;

/// The close reason of a socket whose writes blocked for the write timeout.
pub(super) const SLOW_CONSUMER: &str = "slow consumer";

pub(super) struct Outbox<S> {
    sink: S,
    write_timeout: Duration,
}

impl<S: Sink<Message> + Unpin> Outbox<S> {
    pub(super) fn new(sink: S, write_timeout: Duration) -> Self {
        Self {
            sink,
            write_timeout,
        }
    }

    /// Queues a frame: it leaves with the next [`Self::flush`], or earlier
    /// when the socket's write buffer fills. When the sink has room at once
    /// (nearly always) no timer is armed: arming one per frame was a few
    /// percent of the gateway's instructions per chunk.
    pub(super) async fn feed(&mut self, text: Utf8Bytes) -> Result<(), End> {
        let ready = futures::future::poll_fn(|cx| Poll::Ready(self.sink.poll_ready_unpin(cx)));
        match ready.await {
            Poll::Ready(Ok(())) => {
                return self
                    .sink
                    .start_send_unpin(Message::Text(text))
                    .map_err(|_| End::Closed);
            }
            Poll::Ready(Err(_)) => return Err(End::Closed),
            Poll::Pending => {}
        }
        let fed = tokio::time::timeout(self.write_timeout, self.sink.feed(Message::Text(text)));
        ended_by(fed.await)
    }

    /// Writes out every queued frame.
    pub(super) async fn flush(&mut self) -> Result<(), End> {
        ended_by(tokio::time::timeout(self.write_timeout, self.sink.flush()).await)
    }

    /// Sends the close frame (after anything still queued). The socket is
    /// ending either way, so a failure is only the client's loss.
    pub(super) async fn close(&mut self, code: CloseCode, reason: &'static str) {
        let close = Message::Close(Some(CloseFrame {
            code: code.code(),
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(self.write_timeout, self.sink.send(close)).await;
    }

    #[cfg(test)]
    pub(super) fn sink(&self) -> &S {
        &self.sink
    }
}

/// A write that failed ended the socket: the client is gone, or too slow.
fn ended_by<E>(write: Result<Result<(), E>, tokio::time::error::Elapsed>) -> Result<(), End> {
    match write {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Closed),
        Err(_) => Err(End::Close(CloseCode::TryAgainLater, SLOW_CONSUMER)),
    }
}
