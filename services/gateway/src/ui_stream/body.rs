//! The body of one SSE answer. The session's relay runs inside the body's
//! own polls (hyper's connection task), and the frames it writes are
//! rendered straight into the bytes the body hands to hyper next: no task
//! of its own, no channel, no timer per write. Every frame the relay writes
//! before it waits leaves in one write, as a socket's loop drains its ready
//! events into one flush.
//!
//! hyper polls a body more often than it has news for it (after every
//! write, and again before it waits), so the relay runs under a waker of
//! its own, and is polled only once that waker was woken (or the client
//! made room it was waiting for): a poll of the body with nothing new for
//! the relay costs a flag, not a pass through the relay's `select!`.
//!
//! A client that reads slowly stops hyper polling the body, so the relay
//! stops with it: its live feed lags, and it catches up from the session's
//! recent events or the stream when the client reads again (as a socket
//! that fell behind does). A client that goes away drops the body, and the
//! relay with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::Message;
use bytes::BytesMut;
use futures::task::AtomicWaker;
use futures::{Sink, Stream};
use protocol::MessageId;
use tokio::time::{Instant, Sleep};

use super::chunks::{Next, Renderer};
use super::frame::EventFrame;

/// A comment line at least this often, so proxies and the client's idle
/// timers keep a quiet stream open (a model thinking, a worker restarting).
pub(super) const HEARTBEAT: Duration = Duration::from_secs(15);
/// Rendered bytes not yet taken by hyper at which the relay waits for the
/// client: what one write may carry at most, beyond one frame's chunks.
const HIGH_WATER: usize = 64 * 1024;

/// Why a body was cut.
#[derive(Debug, thiserror::Error)]
#[error("the answer's stream ended early; resume it")]
pub(super) struct Cut;

/// How the rendering ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The answer's terminal event was rendered, `[DONE]` after it.
    Finished,
    /// The relay stopped first (a close frame: the gateway shutting down,
    /// the stream unreadable): the client sees a broken stream and may
    /// resume, never a clean end.
    Cut,
}

/// What the relay rendered and the body has not handed on yet.
struct Rendered {
    /// UTF-8: every piece written is. Each write hands on what is in it
    /// and keeps the room after it: once hyper has sent a write (and
    /// dropped it), the next ones are rendered into the same allocation.
    out: BytesMut,
    renderer: Renderer,
    ending: Option<Ending>,
    /// The relay waits at [`HIGH_WATER`] for `out` to be taken.
    waiting_for_room: bool,
}

type Shared = Arc<Mutex<Rendered>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Rendered> {
    // Nothing panics while holding it; a poisoned lock's data is whole.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The relay's sink: renders each event frame into the body's next write.
pub(super) struct FrameSink(Shared);

/// The answer ended (or was cut): the relay has nothing more to write.
#[derive(Debug)]
pub(super) struct Ended;

impl Sink<Message> for FrameSink {
    type Error = Ended;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        let mut rendered = lock(&self.0);
        if rendered.ending.is_some() {
            return Poll::Ready(Err(Ended));
        }
        if rendered.out.len() >= HIGH_WATER {
            // No waker to register: the out buffer is not empty, so the
            // body hands it on in the poll that sees this relay wait, and
            // (told so by this flag) polls the relay again the next time
            // hyper polls it.
            rendered.waiting_for_room = true;
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: Message) -> Result<(), Ended> {
        let mut rendered = lock(&self.0);
        let Rendered {
            out,
            renderer,
            ending,
            ..
        } = &mut *rendered;
        if ending.is_some() {
            return Err(Ended);
        }
        let next = match frame {
            Message::Text(text) => render_frame(renderer, text.as_str(), out),
            Message::Close(_) => {
                *ending = Some(Ending::Cut);
                Next::More
            }
            _ => Next::More,
        };
        if next == Next::Finished {
            out.extend_from_slice(b"data: [DONE]\n\n");
            *ending = Some(Ending::Finished);
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        Poll::Ready(Ok(()))
    }
}

/// One stored event's chunks, as SSE events (`id:` is its `seq`).
fn render_frame(renderer: &mut Renderer, frame: &str, out: &mut BytesMut) -> Next {
    let Some(event) = EventFrame::parse(frame) else {
        return Next::More;
    };
    let mut seq = itoa::Buffer::new();
    let seq = seq.format(event.seq).as_bytes();
    // About what its chunks take: one growth, not one per doubling.
    out.reserve(frame.len() + 64);
    renderer.render(&event, |chunk| {
        let before = out.len();
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(seq);
        out.extend_from_slice(b"\ndata: ");
        // Straight into the body's bytes; a chunk that cannot be written
        // (none of ours) leaves nothing behind.
        if chunk.write_json(out).is_ok() {
            out.extend_from_slice(b"\n\n");
        } else {
            out.truncate(before);
        }
    })
}

type Relay = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The relay's waker: notes that the relay has news, then wakes the task
/// polling the body (hyper's connection task, whichever waker it last
/// polled the body with).
#[derive(Default)]
struct RelayWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for RelayWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The body's stream of writes: what the relay rendered, a comment after
/// [`HEARTBEAT`] without any, and after the answer's end nothing (or, cut
/// short, an error, so hyper breaks the response off).
pub(super) struct AnswerBody {
    relay: Option<Relay>,
    /// Set when the relay is to be polled; its waker, made once.
    relay_wake: Arc<RelayWake>,
    relay_waker: Waker,
    shared: Shared,
    heartbeat: Pin<Box<Sleep>>,
    last_write: Instant,
    over: bool,
}

impl AnswerBody {
    /// `relay` writes the session's event frames into the sink it is given;
    /// the body renders those of `message_id`.
    pub(super) fn new<F, Fut>(message_id: MessageId, relay: F) -> Self
    where
        F: FnOnce(FrameSink) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let shared = Arc::new(Mutex::new(Rendered {
            out: BytesMut::new(),
            renderer: Renderer::new(message_id),
            ending: None,
            waiting_for_room: false,
        }));
        let now = Instant::now();
        // Woken from the start: the first poll runs the relay.
        let relay_wake = Arc::new(RelayWake::default());
        relay_wake.woken.store(true, Ordering::Relaxed);
        Self {
            relay: Some(Box::pin(relay(FrameSink(shared.clone())))),
            relay_waker: Waker::from(relay_wake.clone()),
            relay_wake,
            shared,
            heartbeat: Box::pin(tokio::time::sleep_until(now + HEARTBEAT)),
            last_write: now,
            over: false,
        }
    }

    /// The rendered bytes, and how the rendering ended (if it did). A
    /// relay waiting for room is polled again once they are handed on.
    fn take(&self) -> (Bytes, Option<Ending>) {
        let mut rendered = lock(&self.shared);
        if std::mem::take(&mut rendered.waiting_for_room) {
            self.relay_wake.woken.store(true, Ordering::Release);
        }
        // Most polls find nothing: no split (a shared count to touch) then.
        let out = if rendered.out.is_empty() {
            Bytes::new()
        } else {
            rendered.out.split().freeze()
        };
        (out, rendered.ending)
    }

    /// Runs the relay if it was woken since its last poll.
    fn poll_relay(&mut self, cx: &mut Context<'_>) {
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        // Registered before the flag is read: a wake after the read wakes
        // this task again.
        self.relay_wake.task.register(cx.waker());
        if !self.relay_wake.woken.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut relay_cx = Context::from_waker(&self.relay_waker);
        if relay.as_mut().poll(&mut relay_cx).is_ready() {
            self.relay = None;
        }
    }

    /// A comment when nothing was written for a heartbeat. The timer is
    /// moved only when it fires, not at every write.
    fn poll_heartbeat(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        while self.heartbeat.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let due = self.last_write + HEARTBEAT;
            if now >= due {
                self.last_write = now;
                self.heartbeat.as_mut().reset(now + HEARTBEAT);
                return Poll::Ready(Bytes::from_static(b":\n\n"));
            }
            self.heartbeat.as_mut().reset(due);
        }
        Poll::Pending
    }
}

impl Stream for AnswerBody {
    type Item = Result<Bytes, Cut>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.over {
            return Poll::Ready(None);
        }
        this.poll_relay(cx);
        let (out, ending) = this.take();
        // A relay that stopped without the answer's end cut it short.
        let ending = ending.or_else(|| this.relay.is_none().then_some(Ending::Cut));
        if ending.is_some() {
            // Nothing more will be rendered: the relay (and its live feed)
            // goes now, not when hyper drops the body.
            this.relay = None;
        }
        if !out.is_empty() {
            this.last_write = Instant::now();
            this.over = ending == Some(Ending::Finished);
            return Poll::Ready(Some(Ok(out)));
        }
        match ending {
            Some(Ending::Finished) => {
                this.over = true;
                Poll::Ready(None)
            }
            Some(Ending::Cut) => {
                this.over = true;
                Poll::Ready(Some(Err(Cut)))
            }
            None => this.poll_heartbeat(cx).map(|beat| Some(Ok(beat))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use protocol::{Event, FinishReason};

    fn frame(event: &Event, seq: u64) -> Message {
        Message::Text(
            protocol::frames::with_seq(&event.to_payload(), seq)
                .unwrap()
                .into(),
        )
    }

    fn chunk(id: MessageId, index: u32, text: &str) -> Event {
        Event::Chunk {
            message_id: id,
            attempt: 1,
            index,
            text: text.into(),
            published_at_us: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_body_beats_while_quiet_and_renders_what_is_queued_in_one_write() {
        let id = MessageId::new();
        let done = Event::Done {
            message_id: id,
            attempt: 1,
            finish_reason: FinishReason::Stop,
            usage: None,
        };
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let mut body = AnswerBody::new(id, |mut sink| async move {
            let _ = wait.await;
            // Two events at once: one write, each chunk with its seq.
            sink.feed(frame(&chunk(id, 0, "Hel"), 7)).await.unwrap();
            sink.feed(frame(&done, 8)).await.unwrap();
            std::future::pending::<()>().await;
        });

        // Nothing for a heartbeat (the paused clock jumps to it): a comment.
        let started = Instant::now();
        let beat = body.next().await.unwrap().unwrap();
        assert_eq!(&beat[..], b":\n\n");
        assert_eq!(started.elapsed(), HEARTBEAT);

        go.send(()).unwrap();
        let written = body.next().await.unwrap().unwrap();
        let text = std::str::from_utf8(&written).unwrap();
        assert!(
            text.starts_with(&format!(
                "id: 7\ndata: {{\"type\":\"start\",\"messageId\":\"{id}\"}}\n\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(
                "id: 7\ndata: {\"type\":\"text-delta\",\"id\":\"text\",\"delta\":\"Hel\"}\n\n"
            ),
            "{text}"
        );
        assert!(text.contains("id: 8\ndata: {\"type\":\"finish\""), "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(body.next().await.is_none(), "the body ends after [DONE]");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_keep_the_heartbeat_away() {
        let id = MessageId::new();
        let mut body = AnswerBody::new(id, |mut sink| async move {
            for index in 0..4 {
                tokio::time::sleep(HEARTBEAT / 2).await;
                sink.send(frame(&chunk(id, index, "x"), 10 + u64::from(index)))
                    .await
                    .unwrap();
            }
            std::future::pending::<()>().await;
        });
        for _ in 0..4 {
            let written = body.next().await.unwrap().unwrap();
            assert!(written.starts_with(b"id: "), "{written:?}");
        }
        // Quiet from here: the comment comes a heartbeat after the last write.
        let quiet_since = Instant::now();
        let beat = body.next().await.unwrap().unwrap();
        assert_eq!(&beat[..], b":\n\n");
        assert_eq!(quiet_since.elapsed(), HEARTBEAT);
    }

    #[tokio::test]
    async fn the_relay_is_polled_only_when_it_was_woken() {
        use std::sync::atomic::AtomicUsize;
        let id = MessageId::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let waker_seen: Arc<Mutex<Option<Waker>>> = Arc::default();
        let (counted, kept) = (polls.clone(), waker_seen.clone());
        let mut body = AnswerBody::new(id, move |_sink| {
            std::future::poll_fn(move |cx| {
                counted.fetch_add(1, Ordering::SeqCst);
                *kept.lock().unwrap() = Some(cx.waker().clone());
                Poll::<()>::Pending
            })
        });
        // hyper polls the body again and again: the relay runs once.
        for _ in 0..5 {
            assert!(futures::poll!(body.next()).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Its waker wakes it: the next poll of the body runs it, once.
        let waker = waker_seen.lock().unwrap().take().unwrap();
        waker.wake_by_ref();
        for _ in 0..3 {
            assert!(futures::poll!(body.next()).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        waker_seen.lock().unwrap().take();
        // A wake from another thread reaches the task polling the body.
        let (task_woken, task_waker) = flag_waker();
        let mut cx = Context::from_waker(&task_waker);
        assert!(Pin::new(&mut body).poll_next(&mut cx).is_pending());
        let waker = waker_seen.lock().unwrap().take();
        assert!(waker.is_none(), "not polled without a wake");
        std::thread::spawn({
            let waker = Waker::from(body.relay_wake.clone());
            move || waker.wake()
        })
        .join()
        .unwrap();
        assert!(
            task_woken.load(Ordering::SeqCst),
            "the body's task was woken"
        );
        assert!(Pin::new(&mut body).poll_next(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    /// A waker that records that it was woken.
    fn flag_waker() -> (Arc<AtomicBool>, Waker) {
        struct Flag(Arc<AtomicBool>);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(AtomicBool::new(false));
        (woken.clone(), Waker::from(Arc::new(Flag(woken))))
    }

    #[tokio::test]
    async fn a_relay_that_stops_before_the_end_cuts_the_body_after_what_it_wrote() {
        let id = MessageId::new();
        let mut body = AnswerBody::new(id, |mut sink| async move {
            sink.send(frame(&chunk(id, 0, "Hel"), 3)).await.unwrap();
            sink.send(Message::Close(None)).await.unwrap();
            // Nothing after the close frame is rendered.
            assert!(sink.send(frame(&chunk(id, 1, "lo"), 4)).await.is_err());
        });
        let written = body.next().await.unwrap().unwrap();
        assert!(std::str::from_utf8(&written).unwrap().contains("\"Hel\""));
        assert!(body.next().await.unwrap().is_err(), "then the cut");
        assert!(body.next().await.is_none());

        // A relay that simply returns cuts it too.
        let mut body = AnswerBody::new(id, |_| async {});
        assert!(body.next().await.unwrap().is_err());
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_holds_the_relay_at_the_high_water_mark() {
        let id = MessageId::new();
        let (fed, count) = tokio::sync::watch::channel(0u32);
        let text = "y".repeat(1000);
        let mut body = AnswerBody::new(id, move |mut sink| async move {
            for index in 0..1000 {
                sink.feed(frame(&chunk(id, index, &text), u64::from(index) + 1))
                    .await
                    .unwrap();
                fed.send_replace(index + 1);
            }
            std::future::pending::<()>().await;
        });
        let first = body.next().await.unwrap().unwrap();
        assert!(first.len() >= HIGH_WATER, "{}", first.len());
        assert!(first.len() < HIGH_WATER + 2_000, "{}", first.len());
        let fed_then = *count.borrow();
        assert!(
            fed_then < 100,
            "the relay waited for the client: {fed_then}"
        );
        // Reading on lets it go on, every chunk once and in order.
        let mut all = String::from_utf8(first.to_vec()).unwrap();
        while !all.contains("id: 1000\n") {
            let more = body.next().await.unwrap().unwrap();
            all.push_str(std::str::from_utf8(&more).unwrap());
        }
        let ids: Vec<u64> = all
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .filter_map(|s| s.parse().ok())
            .collect();
        let mut deltas = ids.clone();
        deltas.dedup();
        assert_eq!(deltas, (1..=1000).collect::<Vec<u64>>());
    }
}
