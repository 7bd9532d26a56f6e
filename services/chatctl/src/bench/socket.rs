//! A lean WebSocket client for thousands of connections in one process:
//! small buffers, Nagle off, frames parsed borrowing from the received text
//! (no allocation per chunk but its text).

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use protocol::ControlKind;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Where clients connect: `http://host:port` (Nginx, or a gateway).
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `host:port`
    authority: String,
    base: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("expected an http:// URL, got {url:?}"))?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("expected http://host:port, got {url:?}");
        }
        Ok(Self {
            authority: authority.to_string(),
            base: format!("http://{authority}"),
        })
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// `http://host:port`
    pub fn http(&self) -> &str {
        &self.base
    }
}

/// Which session a connection attaches to.
#[derive(Clone, Debug, Default)]
pub struct Attach {
    /// `None` = a new session (its token comes in `ready`).
    pub session: Option<(String, String)>,
    pub after_seq: Option<u64>,
}

/// What `ready` said.
#[derive(Clone, Debug)]
pub struct Ready {
    pub session_id: String,
    pub token: String,
    pub node: String,
    pub last_seq: u64,
}

/// How long any single frame may take to arrive before the bench calls it lost.
pub(crate) const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Socket {
    ws: WebSocketStream<TcpStream>,
}

impl Socket {
    /// Connects, upgrades and waits for `ready`.
    pub async fn connect(endpoint: &Endpoint, attach: &Attach) -> anyhow::Result<(Self, Ready)> {
        let mut url = format!("ws://{}/ws/chat", endpoint.authority);
        let mut sep = '?';
        if let Some((session, _)) = &attach.session {
            url.push_str(&format!("?session={session}"));
            sep = '&';
        }
        if let Some(after) = attach.after_seq {
            url.push_str(&format!("{sep}after_seq={after}"));
        }
        let tcp = TcpStream::connect(&endpoint.authority)
            .await
            .with_context(|| format!("connecting to {}", endpoint.authority))?;
        tcp.set_nodelay(true)?;
        // Small buffers: ten thousand idle clients must not cost a gigabyte.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(config))
            .await
            .with_context(|| format!("WebSocket upgrade {url}"))?;
        let mut socket = Socket { ws };
        // A session's token goes in the first frame, never in the URL.
        if let Some((_, token)) = &attach.session {
            let auth = serde_json::json!({"type": "auth", "token": token});
            socket.send(auth.to_string()).await?;
        }
        let text = socket
            .next_text(FRAME_TIMEOUT)
            .await?
            .ok_or_else(|| anyhow!("closed before ready"))?;
        let frame = Frame::parse(&text)?;
        if !frame.is(ControlKind::Ready) {
            bail!("expected ready, got {text}");
        }
        let session_id = frame
            .session_id
            .ok_or_else(|| anyhow!("ready without session_id: {text}"))?
            .into_owned();
        let token = match (frame.token, &attach.session) {
            (Some(t), _) => t.into_owned(),
            (None, Some((_, t))) => t.clone(),
            (None, None) => bail!("a new session's ready has no token: {text}"),
        };
        let ready = Ready {
            session_id,
            token,
            node: frame.node.map(Cow::into_owned).unwrap_or_default(),
            last_seq: frame.last_seq.unwrap_or(0),
        };
        Ok((socket, ready))
    }

    pub async fn send(&mut self, text: String) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next text frame; `None` when the server closed. Pings are
    /// answered by tungstenite on the next read.
    pub async fn next_text(&mut self, timeout: Duration) -> anyhow::Result<Option<Utf8Bytes>> {
        loop {
            let next = tokio::time::timeout(timeout, self.ws.next())
                .await
                .map_err(|_| anyhow!("no frame within {timeout:?}"))?;
            match next {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(t))) => return Ok(Some(t)),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

/// Any server frame, the fields the bench reads, borrowed from the text.
#[derive(Debug, Deserialize)]
pub(crate) struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default, borrow)]
    pub message_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub attempt: Option<u32>,
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
    #[serde(default)]
    pub published_at_us: Option<u64>,
    #[serde(default)]
    pub usage: Option<UsageFields>,
    #[serde(default, borrow)]
    pub session_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub token: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub node: Option<Cow<'a, str>>,
    #[serde(default)]
    pub last_seq: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct UsageFields {
    pub completion_tokens: usize,
}

impl<'a> Frame<'a> {
    pub(crate) fn parse(text: &'a str) -> anyhow::Result<Self> {
        serde_json::from_str(text).with_context(|| format!("unreadable frame {text:?}"))
    }

    /// Whether this is a frame the gateway makes itself of that kind.
    pub(crate) fn is(&self, kind: ControlKind) -> bool {
        self.kind == kind.as_str()
    }
}

/// The `chat` frame for `content` with the given message id.
pub(crate) fn chat_frame(message_id: &str, content: &str) -> String {
    serde_json::json!({"type": "chat", "message_id": message_id, "content": content}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_borrowing_and_with_escapes() {
        let f = Frame::parse(
            r#"{"type":"chunk","message_id":"m","attempt":1,"index":3,"text":"a\"b\n","published_at_us":17,"seq":9}"#,
        )
        .unwrap();
        assert_eq!(f.kind, "chunk");
        assert_eq!((f.seq, f.index, f.attempt), (Some(9), Some(3), Some(1)));
        assert_eq!(f.text.as_deref(), Some("a\"b\n"));
        assert_eq!(f.published_at_us, Some(17));
        let d = Frame::parse(
            r#"{"type":"done","message_id":"m","attempt":1,"finish_reason":"stop","usage":{"prompt_tokens":2,"completion_tokens":80},"seq":10}"#,
        )
        .unwrap();
        assert_eq!(d.usage.unwrap().completion_tokens, 80);
        assert!(Frame::parse("nope").is_err());
    }

    #[test]
    fn endpoints_want_a_plain_http_authority() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8080/").unwrap().http(),
            "http://127.0.0.1:8080"
        );
        assert!(Endpoint::parse("ws://x:1").is_err());
        assert!(Endpoint::parse("http://x:1/a").is_err());
    }
}
