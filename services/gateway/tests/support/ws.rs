//! The tests' WebSocket client: reads protocol frames with timeouts and
//! keeps the stream events that arrive while it waits for a control frame
//! (a chat's echo may come before its `accepted`).

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::frames::{ControlFrame, SequencedEvent, ServerFrame};
use protocol::{CloseCode, ErrorCode, EventKind, MessageId, SessionId};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::WAIT;

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Ws {
    stream: Stream,
    /// Stream events read while waiting for a control frame, not yet taken.
    pending: VecDeque<SequencedEvent>,
    /// `session_list` and `token_expiring` frames (`GATEWAY_AUTH=jwt`),
    /// kept apart: they come between any other two frames.
    side: VecDeque<ControlFrame>,
}

#[derive(Debug)]
pub enum Received {
    Frame(ServerFrame),
    /// The close code, or `None` when the connection ended without one.
    Closed(Option<u16>),
}

/// What `ready` says about the attached session.
#[derive(Debug)]
pub struct Ready {
    pub session: SessionId,
    /// Only when the connection created the session.
    pub token: Option<String>,
    pub node: String,
    pub last_seq: u64,
}

impl Ws {
    pub async fn connect(url: &str) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Self {
            stream,
            pending: VecDeque::new(),
            side: VecDeque::new(),
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send(Message::Text(value.to_string().into())).await;
    }

    pub async fn send(&mut self, message: Message) {
        self.stream.send(message).await.unwrap();
    }

    /// The next frame or the close; fails the test after [`WAIT`].
    pub async fn recv(&mut self) -> Received {
        self.recv_within(WAIT)
            .await
            .expect("no frame within the time limit")
    }

    /// The next frame or the close, or `None` if nothing came within `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Received> {
        loop {
            let next = tokio::time::timeout(limit, self.stream.next()).await.ok()?;
            return Some(match next {
                Some(Ok(Message::Text(text))) => Received::Frame(
                    ServerFrame::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}")),
                ),
                Some(Ok(Message::Close(frame))) => {
                    Received::Closed(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Received::Closed(None),
            });
        }
    }

    pub async fn frame(&mut self) -> ServerFrame {
        match self.recv().await {
            Received::Frame(frame) => frame,
            Received::Closed(code) => panic!("socket closed ({code:?}) while a frame was expected"),
        }
    }

    pub async fn ready(&mut self) -> Ready {
        match self.frame().await {
            ServerFrame::Control(ControlFrame::Ready {
                session_id,
                token,
                node,
                last_seq,
            }) => Ready {
                session: session_id,
                token,
                node,
                last_seq,
            },
            other => panic!("expected ready, got {other:?}"),
        }
    }

    /// The next control frame; stream events before it are kept for
    /// [`Ws::event`], `session_list` and `token_expiring` for [`Ws::side`].
    pub async fn control(&mut self) -> ControlFrame {
        loop {
            match self.frame().await {
                ServerFrame::Control(control) if is_side(&control) => self.side.push_back(control),
                ServerFrame::Control(control) => return control,
                ServerFrame::Event(event) => self.pending.push_back(event),
            }
        }
    }

    /// The next `session_list` frame; other frames on the way are kept.
    pub async fn session_list(&mut self) -> ControlFrame {
        self.side(|f| matches!(f, ControlFrame::SessionList { .. }))
            .await
    }

    /// The next `token_expiring` frame; other frames on the way are kept.
    pub async fn token_expiring(&mut self) -> ControlFrame {
        self.side(|f| matches!(f, ControlFrame::TokenExpiring { .. }))
            .await
    }

    /// The next side frame that is `wanted`; other frames are kept.
    async fn side(&mut self, wanted: impl Fn(&ControlFrame) -> bool) -> ControlFrame {
        loop {
            if let Some(i) = self.side.iter().position(&wanted) {
                if let Some(frame) = self.side.remove(i) {
                    return frame;
                }
            }
            match self.frame().await {
                ServerFrame::Control(control) if wanted(&control) => return control,
                ServerFrame::Control(control) if is_side(&control) => self.side.push_back(control),
                ServerFrame::Control(_) => {}
                ServerFrame::Event(event) => self.pending.push_back(event),
            }
        }
    }

    /// The next stream event (control frames on the way are skipped).
    pub async fn event(&mut self) -> SequencedEvent {
        if let Some(event) = self.pending.pop_front() {
            return event;
        }
        loop {
            if let ServerFrame::Event(event) = self.frame().await {
                return event;
            }
        }
    }

    /// Stream events until `message`'s terminal event (inclusive).
    pub async fn until_terminal(&mut self, message: MessageId) -> Vec<SequencedEvent> {
        let mut events = Vec::new();
        loop {
            let event = self.event().await;
            let last = event.event.is_terminal() && event.event.message_id() == Some(message);
            events.push(event);
            if last {
                return events;
            }
        }
    }

    /// Stream events up to the first of `kind` (inclusive).
    pub async fn until_kind(&mut self, kind: EventKind) -> Vec<SequencedEvent> {
        let mut events = Vec::new();
        loop {
            let event = self.event().await;
            let found = event.event.kind() == kind;
            events.push(event);
            if found {
                return events;
            }
        }
    }

    /// Expects an `error` frame with `code`; returns its message.
    pub async fn expect_error(&mut self, code: ErrorCode) -> String {
        match self.control().await {
            ControlFrame::Error {
                code: got, message, ..
            } => {
                assert_eq!(got, code, "error message: {message}");
                message
            }
            other => panic!("expected error {code:?}, got {other:?}"),
        }
    }

    /// Reads until the socket closes and expects `code`; returns the stream
    /// events that came before the close.
    pub async fn expect_close(&mut self, code: CloseCode) -> Vec<SequencedEvent> {
        let mut events: Vec<SequencedEvent> = self.pending.drain(..).collect();
        loop {
            match self.recv().await {
                Received::Frame(ServerFrame::Event(event)) => events.push(event),
                Received::Frame(ServerFrame::Control(_)) => {}
                Received::Closed(got) => {
                    assert_eq!(got, Some(code.code()), "expected close {code:?}");
                    return events;
                }
            }
        }
    }

    pub async fn ping(&mut self) {
        self.send_json(json!({"type": "ping"})).await;
        match self.control().await {
            ControlFrame::Pong => {}
            other => panic!("expected pong, got {other:?}"),
        }
    }

    /// Sends a chat; returns its id and the `accepted` seq (that of its echo).
    pub async fn chat(&mut self, content: &str) -> (MessageId, u64) {
        let id = MessageId::new();
        self.send_json(json!({"type": "chat", "message_id": id, "content": content}))
            .await;
        match self.control().await {
            ControlFrame::Accepted { message_id, seq } => {
                assert_eq!(message_id, id);
                (id, seq)
            }
            other => panic!("chat not accepted: {other:?}"),
        }
    }

    /// Sends a chat and reads its events up to its `done`; returns its id.
    pub async fn answered(&mut self, content: &str) -> MessageId {
        let (id, _) = self.chat(content).await;
        let events = self.until_terminal(id).await;
        assert_eq!(
            events.last().map(|e| e.event.kind()),
            Some(protocol::EventKind::Done)
        );
        id
    }

    /// Sends a regenerate with a new id (`replaces` as given); returns the id
    /// and the `accepted` seq.
    pub async fn regenerate(&mut self, replaces: Option<MessageId>) -> (MessageId, u64) {
        let id = MessageId::new();
        let mut frame = json!({"type": "regenerate", "message_id": id});
        if let Some(replaces) = replaces {
            frame["replaces"] = json!(replaces);
        }
        self.send_json(frame).await;
        match self.control().await {
            ControlFrame::Accepted { message_id, seq } => {
                assert_eq!(message_id, id);
                (id, seq)
            }
            other => panic!("regenerate not accepted: {other:?}"),
        }
    }

    pub async fn cancel(&mut self, message: MessageId) {
        self.send_json(json!({"type": "cancel", "message_id": message}))
            .await;
    }

    pub async fn resume(&mut self, after_seq: u64) {
        self.send_json(json!({"type": "resume", "after_seq": after_seq}))
            .await;
    }
}

/// Frames of `GATEWAY_AUTH=jwt` that may come between any other two.
fn is_side(frame: &ControlFrame) -> bool {
    matches!(
        frame,
        ControlFrame::SessionList { .. } | ControlFrame::TokenExpiring { .. }
    )
}
