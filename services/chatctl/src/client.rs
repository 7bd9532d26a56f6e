//! A chat client as a browser tab would be one: it creates a session over
//! REST, holds a WebSocket on `/ws/chat`, asks questions with a message id
//! it chose, remembers the highest `seq` it has seen and, whenever the
//! connection goes away (a dropped socket, a killed gateway, a 1012/1013
//! close), reconnects with `after_seq` and a growing backoff.
//!
//! It keeps everything it received, duplicates included, with the instant
//! it arrived: [`crate::verify`] compares that with the stream afterwards,
//! and [`crate::recovery`] measures how long faults kept it waiting.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use protocol::frames::{ControlFrame, SequencedEvent, ServerFrame};
use protocol::{ClientFrame, CloseCode, ErrorCode, MessageId, SessionId};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use crate::backoff::Backoff;

mod session_log;
pub use session_log::{Asked, Attachment, Received, SessionLog};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// REST calls of the protocol a tool needs: creating a session and reading
/// a session's stored events (the truth a client is compared with).
#[derive(Clone, Debug)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Created {
    session_id: SessionId,
    token: String,
}

#[derive(Deserialize)]
struct EventsPage {
    events: Vec<SequencedEvent>,
}

impl Api {
    /// `base` is `http://127.0.0.1:PORT` (Nginx or one gateway).
    pub fn new(base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /api/sessions`: a new session and its token.
    pub async fn create_session(&self) -> anyhow::Result<(SessionId, String)> {
        let response = self
            .http
            .post(format!("{}/api/sessions", self.base))
            .json(&serde_json::json!({}))
            .send()
            .await
            .context("POST /api/sessions")?;
        let status = response.status();
        if status.as_u16() != 201 {
            let body = response.text().await.unwrap_or_default();
            bail!("POST /api/sessions answered {status}: {body}");
        }
        let created: Created = response.json().await.context("POST /api/sessions body")?;
        Ok((created.session_id, created.token))
    }

    /// [`Api::create_session`], retried with backoff until `deadline` (a
    /// gateway may be restarting, NATS may be coming back).
    pub async fn create_session_until(
        &self,
        deadline: Instant,
    ) -> anyhow::Result<(SessionId, String)> {
        let mut backoff = Backoff::new();
        loop {
            match self.create_session().await {
                Ok(created) => return Ok(created),
                Err(e) if Instant::now() + backoff.peek() < deadline => {
                    tracing_free_log(&format!("create session: {e:#}; retrying"));
                    backoff.wait().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `GET /api/events?session=S&after_seq=N`, page after page, from the
    /// start: every stored event of the session, in the stream's order.
    pub async fn events(
        &self,
        session: SessionId,
        token: &str,
    ) -> anyhow::Result<Vec<SequencedEvent>> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let response = self
                .http
                .get(format!(
                    "{}/api/events?session={session}&after_seq={after}",
                    self.base
                ))
                .bearer_auth(token)
                .send()
                .await
                .context("GET /api/events")?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                bail!("GET /api/events answered {status}: {body}");
            }
            let page: EventsPage = response.json().await.context("GET /api/events body")?;
            let Some(last) = page.events.last().map(|e| e.seq) else {
                return Ok(all);
            };
            if last <= after {
                bail!("GET /api/events after_seq={after} answered older events");
            }
            all.extend(page.events);
            // A page is bounded; one more call finds out whether more follow.
            after = last;
        }
    }

    /// [`Api::events`], retried until `deadline`.
    pub async fn events_until(
        &self,
        session: SessionId,
        token: &str,
        deadline: Instant,
    ) -> anyhow::Result<Vec<SequencedEvent>> {
        let mut backoff = Backoff::new();
        loop {
            match self.events(session, token).await {
                Ok(events) => return Ok(events),
                Err(_) if Instant::now() + backoff.peek() < deadline => backoff.wait().await,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Debug output for the tool, only with `CHATCTL_DEBUG` set: the summary is
/// the product, not a log.
fn tracing_free_log(line: &str) {
    if std::env::var_os("CHATCTL_DEBUG").is_some() {
        eprintln!("chatctl: {line}");
    }
}

/// Tunables of a client.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// A WebSocket handshake that takes longer is abandoned and retried.
    pub connect_timeout: Duration,
    /// With a question in flight and no frame for this long, the client
    /// reconnects (with `after_seq`): a half-open connection must not hang
    /// a session until the deadline. Reconnecting is always safe.
    pub stall_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(8),
        }
    }
}

/// Where a client is, for another task to wait on (a test killing the
/// gateway a session streams through once it streams).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The gateway node of the current connection.
    pub node: Option<String>,
    pub events: usize,
    pub chunks: usize,
    /// The highest attempt of any chunk or restart received.
    pub attempt: u32,
}

/// Lets another task drop a client's socket abruptly (no close frame), as
/// a network failure would.
#[derive(Clone, Debug, Default)]
pub struct SocketDropper(Arc<Notify>);

impl SocketDropper {
    pub fn drop_socket(&self) {
        self.0.notify_one();
    }
}

/// What reading the connection gave.
enum Read {
    Frame(ServerFrame),
    /// The connection is gone (and forgotten); the next read reconnects.
    Lost,
    /// A WebSocket-level frame (ping, pong) with nothing for the client.
    Nothing,
}

/// Chat error codes worth retrying the same message id for: the gateway or
/// NATS is busy or briefly away, and the send is idempotent.
fn retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Internal | ErrorCode::Overloaded | ErrorCode::RateLimited
    )
}

/// A session's client: one WebSocket at a time, reconnected as needed.
pub struct ChatClient {
    ws_base: String,
    session: SessionId,
    token: String,
    options: ClientOptions,
    socket: Option<Socket>,
    /// Bumped per attached connection, so a chat is re-sent once per new
    /// connection until it is accepted.
    generation: u64,
    last_seq: u64,
    dropper: SocketDropper,
    progress: watch::Sender<Progress>,
    pub log: SessionLog,
}

impl ChatClient {
    /// A client of an existing session; it connects on first use.
    /// `base` is `http://127.0.0.1:PORT`.
    pub fn new(base: &str, session: SessionId, token: String, options: ClientOptions) -> Self {
        let ws_base = base
            .trim_end_matches('/')
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1);
        Self {
            ws_base,
            session,
            token,
            options,
            socket: None,
            generation: 0,
            last_seq: 0,
            dropper: SocketDropper::default(),
            progress: watch::Sender::new(Progress::default()),
            log: SessionLog::default(),
        }
    }

    pub fn session(&self) -> SessionId {
        self.session
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The highest `seq` received so far.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn dropper(&self) -> SocketDropper {
        self.dropper.clone()
    }

    /// Watches the client's [`Progress`].
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Whether a socket is attached right now.
    pub fn connected(&self) -> bool {
        self.socket.is_some()
    }

    /// Attaches a socket, retrying with backoff until `deadline`.
    pub async fn connect(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let mut backoff = Backoff::new();
        while self.socket.is_none() {
            match self.try_connect().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if Instant::now() + backoff.peek() >= deadline {
                        return Err(e.context(format!(
                            "session {}: no connection before the deadline",
                            self.session
                        )));
                    }
                    tracing_free_log(&format!("session {}: {e:#}; retrying", self.session));
                    backoff.wait().await;
                }
            }
        }
        Ok(())
    }

    async fn try_connect(&mut self) -> anyhow::Result<()> {
        let url = format!(
            "{}/ws/chat?session={}&after_seq={}",
            self.ws_base, self.session, self.last_seq
        );
        let (mut socket, _) = tokio::time::timeout(
            self.options.connect_timeout,
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| anyhow!("WebSocket handshake timed out"))?
        .context("WebSocket handshake")?;
        // The token goes in the first frame, never in the URL.
        let auth = serde_json::json!({"type": "auth", "token": self.token});
        socket
            .send(Message::Text(auth.to_string().into()))
            .await
            .context("sending the auth frame")?;
        // The first frame is `ready` (or an error and a close).
        let first = tokio::time::timeout(self.options.connect_timeout, socket.next())
            .await
            .map_err(|_| anyhow!("no ready frame"))?;
        let text = match first {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => bail!("closed before ready: {frame:?}"),
            Some(Ok(other)) => bail!("unexpected first frame {other:?}"),
            Some(Err(e)) => return Err(anyhow!(e).context("reading ready")),
            None => bail!("connection ended before ready"),
        };
        match ServerFrame::parse(&text) {
            Ok(ServerFrame::Control(ControlFrame::Ready { node, .. })) => {
                self.progress.send_modify(|p| p.node = Some(node.clone()));
                self.log.attachments.push(Attachment {
                    at: Instant::now(),
                    node,
                });
            }
            Ok(other) => bail!("expected ready, got {other:?}"),
            Err(e) => bail!("unreadable first frame {text}: {e}"),
        }
        self.socket = Some(socket);
        self.generation += 1;
        Ok(())
    }

    /// Forgets the socket without a close frame, as a dead network would.
    pub fn drop_socket(&mut self) {
        if self.socket.take().is_some() {
            self.log.reconnects += 1;
        }
    }

    async fn send(&mut self, frame: &ClientFrame) -> anyhow::Result<()> {
        let text = serde_json::to_string(frame)?;
        let Some(socket) = self.socket.as_mut() else {
            bail!("not connected");
        };
        if let Err(e) = socket.send(Message::text(text)).await {
            self.drop_socket();
            return Err(anyhow!(e).context("sending a frame"));
        }
        Ok(())
    }

    /// Reads the next frame, reconnecting first if needed. Records events.
    async fn read(&mut self, deadline: Instant, stall: Duration) -> anyhow::Result<Read> {
        self.connect(deadline).await?;
        let dropper = self.dropper.0.clone();
        let Some(socket) = self.socket.as_mut() else {
            return Ok(Read::Lost);
        };
        let wait = stall.min(deadline.saturating_duration_since(Instant::now()));
        let next = tokio::select! {
            next = socket.next() => next,
            () = dropper.notified() => {
                self.drop_socket();
                return Ok(Read::Lost);
            }
            () = tokio::time::sleep(wait) => {
                if Instant::now() >= deadline {
                    bail!("deadline passed while waiting for frames");
                }
                tracing_free_log(&format!("session {}: stalled; reconnecting", self.session));
                self.drop_socket();
                return Ok(Read::Lost);
            }
        };
        match next {
            Some(Ok(Message::Text(text))) => match ServerFrame::parse(&text) {
                Ok(frame) => {
                    match &frame {
                        ServerFrame::Event(event) => self.record(event.clone()),
                        ServerFrame::Control(ControlFrame::Error {
                            code: ErrorCode::ReplayExpired,
                            ..
                        }) => {
                            self.log.replay_expired += 1;
                            return Ok(Read::Nothing);
                        }
                        _ => {}
                    }
                    Ok(Read::Frame(frame))
                }
                Err(e) => bail!("session {}: unreadable frame {text}: {e}", self.session),
            },
            Some(Ok(Message::Close(frame))) => {
                let code = frame
                    .as_ref()
                    .and_then(|f| CloseCode::from_code(u16::from(f.code)));
                match code {
                    Some(CloseCode::ServiceRestart | CloseCode::TryAgainLater) => {
                        self.log.restart_closes += 1;
                    }
                    Some(CloseCode::PolicyViolation) => bail!(
                        "session {}: closed with {} (policy): {frame:?}",
                        self.session,
                        CloseCode::PolicyViolation.code()
                    ),
                    _ => {}
                }
                self.drop_socket();
                Ok(Read::Lost)
            }
            // Ping, pong, binary: nothing to record; read on.
            Some(Ok(_)) => Ok(Read::Nothing),
            Some(Err(_)) | None => {
                self.drop_socket();
                Ok(Read::Lost)
            }
        }
    }

    fn record(&mut self, event: SequencedEvent) {
        let at = Instant::now();
        self.last_seq = self.last_seq.max(event.seq);
        if event.event.is_terminal() {
            if let Some(id) = event.event.message_id() {
                if let Some(asked) = self
                    .log
                    .asked
                    .iter_mut()
                    .find(|a| a.message_id == id && a.finished_at.is_none())
                {
                    asked.finished_at = Some(at);
                }
            }
        }
        self.progress.send_modify(|p| {
            p.events += 1;
            match &event.event {
                protocol::Event::Chunk { attempt, .. } => {
                    p.chunks += 1;
                    p.attempt = p.attempt.max(*attempt);
                }
                protocol::Event::Restart { attempt, .. } => p.attempt = p.attempt.max(*attempt),
                _ => {}
            }
        });
        self.log.received.push(Received { at, event });
    }

    fn finished(&self, message_id: MessageId) -> bool {
        self.log
            .asked
            .iter()
            .any(|a| a.message_id == message_id && a.finished_at.is_some())
    }

    /// Asks `prompt` with a fresh message id and waits until the answer's
    /// terminal event arrived (through any number of reconnects), or fails
    /// at `deadline`. A chat refused with a retryable code is sent again
    /// with the same message id; any other refusal is an error.
    pub async fn ask(&mut self, prompt: &str, deadline: Instant) -> anyhow::Result<MessageId> {
        let message_id = MessageId::new();
        let frame = ClientFrame::Chat {
            message_id: Some(message_id),
            content: prompt.to_string(),
            model: None,
        };
        self.exchange(frame, message_id, prompt, None, deadline)
            .await
    }

    /// Asks `prompt` as [`ChatClient::ask`] does and sends `cancel` once
    /// `after_chunks` chunks of its answer arrived; waits for the terminal
    /// event (`cancelled`, or `done` when the answer was quicker).
    pub async fn ask_then_cancel(
        &mut self,
        prompt: &str,
        after_chunks: usize,
        deadline: Instant,
    ) -> anyhow::Result<MessageId> {
        let message_id = MessageId::new();
        let frame = ClientFrame::Chat {
            message_id: Some(message_id),
            content: prompt.to_string(),
            model: None,
        };
        self.exchange(frame, message_id, prompt, Some(after_chunks), deadline)
            .await
    }

    /// Asks for a new answer to the session's last question (`prompt`, its
    /// text: the answer the demo model gives depends on it) and waits for
    /// its terminal event, as [`ChatClient::ask`] does.
    pub async fn regenerate(
        &mut self,
        prompt: &str,
        deadline: Instant,
    ) -> anyhow::Result<MessageId> {
        let message_id = MessageId::new();
        let frame = ClientFrame::Regenerate {
            message_id: Some(message_id),
            replaces: None,
            model: None,
        };
        self.exchange(frame, message_id, prompt, None, deadline)
            .await
    }

    /// Sends `frame` (a chat or a regenerate of `message_id`) until it is
    /// accepted, and reads until its answer's terminal event; with
    /// `cancel_after`, cancels the answer after that many of its chunks.
    async fn exchange(
        &mut self,
        frame: ClientFrame,
        message_id: MessageId,
        prompt: &str,
        cancel_after: Option<usize>,
        deadline: Instant,
    ) -> anyhow::Result<MessageId> {
        self.log.asked.push(Asked {
            message_id,
            prompt: prompt.to_string(),
            sent_at: Instant::now(),
            finished_at: None,
        });
        let mut chunks = 0;
        let mut cancel_sent = false;
        let mut accepted = false;
        let mut sent_on = None;
        let mut backoff = Backoff::new();
        while !self.finished(message_id) {
            if Instant::now() >= deadline {
                bail!(
                    "session {}: message {message_id} not finished by the deadline",
                    self.session
                );
            }
            self.connect(deadline).await?;
            if !accepted && sent_on != Some(self.generation) {
                sent_on = Some(self.generation);
                if self.send(&frame).await.is_err() {
                    continue;
                }
            }
            match self.read(deadline, self.options.stall_timeout).await? {
                Read::Lost | Read::Nothing => {}
                Read::Frame(ServerFrame::Control(ControlFrame::Accepted {
                    message_id: id,
                    ..
                })) if id == message_id => {
                    accepted = true;
                }
                Read::Frame(ServerFrame::Control(ControlFrame::Error {
                    message_id: id,
                    code,
                    message,
                })) if !accepted && id.is_none_or(|id| id == message_id) => {
                    if !retryable(code) || Instant::now() + backoff.peek() >= deadline {
                        bail!(
                            "session {}: chat {message_id} refused: {} {message}",
                            self.session,
                            code.as_str()
                        );
                    }
                    backoff.wait().await;
                    sent_on = None;
                }
                Read::Frame(ServerFrame::Event(e)) => {
                    if matches!(&e.event, protocol::Event::Chunk { message_id: id, .. } if *id == message_id)
                    {
                        chunks += 1;
                    }
                }
                Read::Frame(_) => {}
            }
            if cancel_after.is_some_and(|n| chunks >= n)
                && !cancel_sent
                && !self.finished(message_id)
                && self.send(&ClientFrame::Cancel { message_id }).await.is_ok()
            {
                cancel_sent = true;
            }
        }
        Ok(message_id)
    }

    /// Reads on until the client has caught up with `last_seq` (or the
    /// deadline passes): used to wait for events that follow a terminal one.
    pub async fn catch_up(&mut self, last_seq: u64, deadline: Instant) -> anyhow::Result<()> {
        while self.last_seq < last_seq {
            if Instant::now() >= deadline {
                bail!(
                    "session {}: at seq {} of {last_seq} at the deadline",
                    self.session,
                    self.last_seq
                );
            }
            self.read(deadline, self.options.stall_timeout).await?;
        }
        Ok(())
    }

    /// Closes the socket politely.
    pub async fn close(&mut self) {
        if let Some(mut socket) = self.socket.take() {
            let _ = socket.close(None).await;
        }
    }
}

#[cfg(test)]
mod tests;
