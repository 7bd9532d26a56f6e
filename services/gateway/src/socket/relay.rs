//! A socket's sequence bookkeeping: every frame the client gets passes
//! here, in order, and `last_sent` says how far the client has been served.
//! A live event at or below it is a duplicate (already replayed or
//! repaired); one whose predecessor on the session's subject
//! (`Nats-Last-Sequence`) is above it reveals a gap, read from the stream
//! before the event is sent. Replay for `?after_seq=` and for a `resume`
//! frame is one path ([`Relay::replay_after`]).
//!
//! Written over any `Sink<Message>` and any [`StoredEvents`], so the
//! bookkeeping is tested here with a `Vec` and a fake stream.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use futures::Sink;
use protocol::frames::ControlFrame;
use protocol::{CloseCode, EventKind};

use super::outbox::{Outbox, SLOW_CONSUMER};
use super::End;
use crate::error::ApiError;
use crate::live::{self, LiveEvent};
use crate::metrics;
use crate::replay::{Position, StoredEvents};

/// Reads of a known hole before the socket is given up, and the pause
/// before each retry (times the attempt).
const REPAIR_ATTEMPTS: u32 = 4;
const REPAIR_RETRY: Duration = Duration::from_millis(20);

/// Stored events read and sent at a time by a replay or a repair: what one
/// socket holds in memory at most, however long the session. Each page is
/// written out before the next is read, so a slow client slows its own
/// replay (the socket's backpressure), never the gateway's memory.
pub(crate) const REPLAY_PAGE: usize = 512;

/// The close reason when the stream could not be read mid-socket.
const REPLAY_FAILED: &str = "replay failed; reconnect with after_seq";

/// Why a replay after `after_seq` stopped.
enum ReplayFailed {
    /// The socket ended while the replay was being sent.
    Ended(End),
    /// The finished turns for `replay_expired` could not be read.
    History(ApiError),
    /// The stored events could not be read.
    Events(ApiError),
}

pub(super) struct Relay<S, R> {
    outbox: Outbox<S>,
    stored: R,
    /// The highest sequence this socket has sent (or the point it starts
    /// after).
    last_sent: u64,
}

impl<S: Sink<Message> + Unpin, R: StoredEvents> Relay<S, R> {
    /// A relay whose client has everything up to `start_after`.
    pub(super) fn new(outbox: Outbox<S>, stored: R, start_after: u64) -> Self {
        Self {
            outbox,
            stored,
            last_sent: start_after,
        }
    }

    pub(super) fn last_sent(&self) -> u64 {
        self.last_sent
    }

    /// The replay of a socket that attached with `?after_seq=` (its
    /// `position` was read while attaching). A failed read closes the socket
    /// with 1013: the client reconnects with `after_seq`.
    pub(super) async fn start_after(&mut self, after: u64, position: Position) -> Result<(), End> {
        self.replay_after(after, position)
            .await
            .map_err(|failed| match failed {
                ReplayFailed::Ended(end) => end,
                ReplayFailed::History(_) => End::Close(CloseCode::TryAgainLater, "replay failed"),
                ReplayFailed::Events(_) => End::Close(CloseCode::TryAgainLater, REPLAY_FAILED),
            })
    }

    /// Starts with one stored event in hand (`frame`, at `seq`): the feed
    /// attached before it was stored, so every later event comes live.
    pub(super) async fn start_with(&mut self, seq: u64, frame: String) -> Result<(), End> {
        self.send_stored(frame).await?;
        self.last_sent = self.last_sent.max(seq);
        Ok(())
    }

    /// The `resume` frame: replay everything after `after`, even what this
    /// socket sent already (the client asked for it), then carry on live.
    /// A failure is an `error` frame; the socket carries on.
    pub(super) async fn resume(&mut self, after: u64) -> Result<(), End> {
        let position = match self.stored.position(Some(after)).await {
            Ok(position) => position,
            Err(e) => return self.send_control(&e.frame(None)).await,
        };
        match self.replay_after(after, position).await {
            Ok(()) => Ok(()),
            Err(ReplayFailed::Ended(end)) => Err(end),
            Err(ReplayFailed::History(e) | ReplayFailed::Events(e)) => {
                self.send_control(&e.frame(None)).await
            }
        }
    }

    /// `after_seq` → the stored events after it, through the session's last
    /// at `position`; when the stream no longer holds them all,
    /// `replay_expired` and the history come first, then what it holds.
    /// Live events up to `position.last_seq` are duplicates afterwards.
    async fn replay_after(&mut self, after: u64, position: Position) -> Result<(), ReplayFailed> {
        metrics::replay_started();
        let from = if position.expired {
            let notice = self
                .stored
                .expired_notice(position.last_seq)
                .await
                .map_err(ReplayFailed::History)?;
            for frame in &notice {
                self.send_control(frame)
                    .await
                    .map_err(ReplayFailed::Ended)?;
            }
            position.first_available
        } else {
            after.saturating_add(1)
        };
        let mut next = from;
        while next <= position.last_seq {
            let page = self
                .stored
                .frames(next, position.last_seq, REPLAY_PAGE)
                .await
                .map_err(ReplayFailed::Events)?;
            let full = page.len() == REPLAY_PAGE;
            let Some(&(end, _)) = page.last() else {
                break;
            };
            for (seq, frame) in page {
                self.send_stored(frame).await.map_err(ReplayFailed::Ended)?;
                self.last_sent = self.last_sent.max(seq);
            }
            self.flush().await.map_err(ReplayFailed::Ended)?;
            if !full {
                break;
            }
            next = end + 1;
        }
        Ok(())
    }

    /// One live event: drop a duplicate, fill a gap from the stream, send.
    /// The per-chunk path: no allocation, no parse.
    pub(super) async fn live(&mut self, event: &LiveEvent) -> Result<(), End> {
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
        self.outbox.feed(event.frame.clone()).await?;
        metrics::event_frame_out(event.kind, event.kind == Some(EventKind::Chunk));
        self.last_sent = event.seq;
        Ok(())
    }

    /// After falling behind the ring: the session's recent events (those
    /// after `last_sent`; `live` reads the stream for any older hole). The
    /// ring's copies of them, still to come, are then dropped as duplicates.
    pub(super) async fn catch_up(
        &mut self,
        recent: impl IntoIterator<Item = Arc<LiveEvent>>,
    ) -> Result<(), End> {
        for event in recent {
            self.live(&event).await?;
        }
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
            self.repair(from, through).await?;
            if self.last_sent >= through {
                return Ok(());
            }
        }
        Err(End::Close(
            CloseCode::TryAgainLater,
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
    pub(super) async fn check_tail(&mut self, suspect: Option<u64>) -> Result<Option<u64>, End> {
        let last = match self.stored.position(None).await {
            Ok(position) => position.last_seq,
            Err(e) => {
                tracing::debug!(error = ?e, "tail check failed");
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
                self.repair(from, last).await?;
                Ok(None)
            }
            _ => Ok(Some(last)),
        }
    }

    /// Sends the stored events in `[from, until]` above `last_sent`, a
    /// page at a time.
    async fn repair(&mut self, from: u64, until: u64) -> Result<(), End> {
        let mut next = from;
        while next <= until {
            let page = self
                .stored
                .frames(next, until, REPLAY_PAGE)
                .await
                .map_err(|_| End::Close(CloseCode::TryAgainLater, REPLAY_FAILED))?;
            let full = page.len() == REPLAY_PAGE;
            let Some(&(end, _)) = page.last() else {
                break;
            };
            for (seq, frame) in page {
                if seq <= self.last_sent {
                    continue;
                }
                self.send_stored(frame).await?;
                self.last_sent = seq;
            }
            if !full {
                break;
            }
            self.flush().await?;
            next = end + 1;
        }
        Ok(())
    }

    async fn send_stored(&mut self, frame: String) -> Result<(), End> {
        let kind = live::event_kind(frame.as_bytes());
        self.outbox.feed(frame.into()).await?;
        metrics::event_frame_out(kind, false);
        Ok(())
    }

    pub(super) async fn send_control(&mut self, frame: &ControlFrame) -> Result<(), End> {
        self.send_text(frame.to_json().into(), frame.kind().as_str())
            .await
    }

    async fn send_text(&mut self, text: Utf8Bytes, kind: &'static str) -> Result<(), End> {
        self.outbox.feed(text).await?;
        metrics::frames_out(kind, 1);
        Ok(())
    }

    /// Writes out every queued frame: each step of the socket's loop ends
    /// with one, so what a step queued leaves in as few writes as it takes.
    pub(super) async fn flush(&mut self) -> Result<(), End> {
        self.outbox.flush().await
    }

    /// Ends the socket: a close frame unless the client went away.
    pub(super) async fn end(mut self, end: End) {
        if let End::Close(code, reason) = end {
            if code == CloseCode::TryAgainLater && reason == SLOW_CONSUMER {
                metrics::slow_client_closed();
            }
            self.outbox.close(code, reason).await;
        }
    }
}

#[cfg(test)]
mod tests;
