//! Nginx from `nginx/nginx.conf.template` in front of fake upstreams (tiny
//! HTTP servers that answer with their own name): sticky routing on the
//! session id, failover when an upstream dies, the static UI, the REST rate
//! limit, and the shell renderer agreeing with the Rust one.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use stack::http::{http_get, http_get_full};
use stack::nginx::{render_nginx, Nginx, NginxConfig, NginxLimits};
use stack::project::project_dir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An HTTP server answering every request with `200 "<name> <path>"`.
struct FakeUpstream {
    port: u16,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the accept task drops
            // them too, as a killed process would.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    // Keep-alive: answer requests until the peer closes.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let path = head.split_whitespace().nth(1).unwrap_or("?").to_string();
                        let body = format!("{name} {path}");
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, task }
    }

    /// Closes the listening socket and every connection: new connections are refused.
    fn stop(&self) {
        self.task.abort();
    }
}

async fn nginx_for(upstreams: &[u16], dir: &Path, limits: NginxLimits) -> Nginx {
    let web_root = dir.join("www");
    std::fs::create_dir_all(web_root.join("assets")).unwrap();
    std::fs::write(web_root.join("index.html"), "<h1>chat ui</h1>").unwrap();
    std::fs::write(web_root.join("assets/app.js"), "console.log(1)").unwrap();
    Nginx::start(NginxConfig {
        port: 0,
        run_dir: dir.join("nginx"),
        log_dir: dir.join("logs"),
        web_root,
        upstreams: upstreams
            .iter()
            .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], *port)))
            .collect(),
        limits,
    })
    .await
    .unwrap()
}

/// Which upstream answered `path` (the first word of the body).
async fn upstream_of(url: &str) -> String {
    let (status, body) = http_get(url).await.unwrap();
    assert_eq!(status, 200, "{url}: {body}");
    body.split_whitespace().next().unwrap().to_string()
}

#[tokio::test]
async fn sessions_stick_to_one_upstream_and_move_when_it_dies() {
    let names = ["up-a", "up-b", "up-c"];
    let mut ups = Vec::new();
    for name in names {
        ups.push(FakeUpstream::start(name).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = ups.iter().map(|u| u.port).collect();
    let nginx = nginx_for(&ports, dir.path(), NginxLimits::default()).await;
    let base = nginx.url();

    // /health and /metrics are proxied (metrics only from loopback: we are).
    assert!(names.contains(&upstream_of(&format!("{base}/health")).await.as_str()));
    assert!(names.contains(&upstream_of(&format!("{base}/metrics")).await.as_str()));

    // Every request of a session, REST or WebSocket path, reaches one upstream.
    let sessions: Vec<String> = (0..24)
        .map(|i| format!("5e55{i:04}-0000-4000-8000-000000000000"))
        .collect();
    let mut home = HashMap::new();
    for s in &sessions {
        let first = upstream_of(&format!("{base}/api/events?session={s}&after_seq=0")).await;
        for path in ["/api/history", "/ws/chat", "/api/events"] {
            for _ in 0..2 {
                let again = upstream_of(&format!("{base}{path}?session={s}")).await;
                assert_eq!(
                    again, first,
                    "session {s} moved from {first} to {again} on {path}"
                );
            }
        }
        home.insert(s.clone(), first);
    }
    let used: HashSet<&String> = home.values().collect();
    assert!(used.len() >= 2, "24 sessions all hashed to {used:?}");

    // Requests without a session are spread, not all on one node.
    let mut anonymous = HashSet::new();
    for _ in 0..30 {
        anonymous.insert(upstream_of(&format!("{base}/api/sessions")).await);
    }
    assert!(
        anonymous.len() >= 2,
        "session-less requests all went to {anonymous:?}"
    );

    // Kill the upstream of the first session: its sessions move to a live
    // one (proxy_next_upstream), the others stay where they were.
    let victim = home[&sessions[0]].clone();
    let index = names.iter().position(|n| *n == victim).unwrap();
    ups[index].stop();
    for s in &sessions {
        let now = upstream_of(&format!("{base}/api/events?session={s}")).await;
        assert_ne!(now, victim, "session {s} still routed to the dead upstream");
        if home[s] != victim {
            assert_eq!(
                now, home[s],
                "session {s} moved although its upstream lives"
            );
        }
    }
}

#[tokio::test]
async fn serves_the_single_page_app_and_its_assets() {
    let up = FakeUpstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let nginx = nginx_for(&[up.port], dir.path(), NginxLimits::default()).await;
    let base = nginx.url();
    for path in ["/", "/index.html", "/some/client/route"] {
        let (status, body) = http_get(&format!("{base}{path}")).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "<h1>chat ui</h1>"), "{path}");
    }
    let (status, body) = http_get(&format!("{base}/assets/app.js")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "console.log(1)"));
    let (status, _) = http_get(&format!("{base}/assets/missing.js"))
        .await
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn too_many_api_requests_from_one_ip_get_429() {
    let up = FakeUpstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let limits = NginxLimits {
        ws_connections: 10,
        api_rate_per_sec: 1,
        api_burst: 2,
        ..NginxLimits::default()
    };
    let nginx = nginx_for(&[up.port], dir.path(), limits).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (status, _) = http_get(&format!("{}/api/history?session=x", nginx.url()))
            .await
            .unwrap();
        statuses.push(status);
    }
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "no request was limited: {statuses:?}"
    );
    // Nginx's refusal speaks the protocol: JSON `rate_limited`.
    assert_rate_limited(&format!("{}/api/history?session=x", nginx.url())).await;
    // /health is not rate limited.
    for _ in 0..5 {
        assert_eq!(
            http_get(&format!("{}/health", nginx.url()))
                .await
                .unwrap()
                .0,
            200
        );
    }
}

#[test]
fn the_shell_and_rust_renderers_agree() {
    let dir = tempfile::tempdir().unwrap();
    let config = NginxConfig {
        port: 18123,
        run_dir: dir.path().join("nginx"),
        log_dir: dir.path().join("logs"),
        web_root: dir.path().join("www"),
        upstreams: [3001, 3002, 3003]
            .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .to_vec(),
        limits: NginxLimits {
            ws_connections: 77,
            api_rate_per_sec: 55,
            api_burst: 66,
            sessions_per_min: 30,
            session_burst: 30,
        },
    };
    let template =
        std::fs::read_to_string(project_dir().join("nginx/nginx.conf.template")).unwrap();
    let rust = render_nginx(&template, &config).unwrap();
    assert!(!rust.contains("@@"));
    assert!(rust.contains("server 127.0.0.1:3003 "));
    let out = Command::new(project_dir().join("scripts/render-nginx.sh"))
        .arg(&config.run_dir)
        .arg(&config.web_root)
        .args(["18123", "3001", "3002", "3003"])
        .env("NGINX_LOG_DIR", &config.log_dir)
        .env("NGINX_WS_CONN_LIMIT", "77")
        .env("NGINX_API_RATE", "55")
        .env("NGINX_API_BURST", "66")
        .env("NGINX_SESSION_RATE", "30")
        .env("NGINX_SESSION_BURST", "30")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        rust.trim_end()
    );
    assert!(render_nginx("listen @@NOPE@@;", &config).is_err());
}

#[tokio::test]
async fn websockets_are_upgraded_and_stream_through() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    // A WebSocket upstream that echoes every text frame with a prefix.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else {
                    return;
                };
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    if ws
                        .send(Message::text(format!("echo {text}")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let nginx = nginx_for(&[port], dir.path(), NginxLimits::default()).await;
    let url = format!("ws://127.0.0.1:{}/ws/chat?session=abc", nginx.port());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    for i in 0..3 {
        ws.send(Message::text(format!("hi {i}"))).await.unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(answer.into_text().unwrap().as_str(), format!("echo hi {i}"));
    }
    server.abort();
}

#[tokio::test]
async fn one_address_creates_sessions_at_a_bounded_rate() {
    let up = FakeUpstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let limits = NginxLimits {
        sessions_per_min: 1,
        session_burst: 2,
        ..NginxLimits::default()
    };
    let nginx = nginx_for(&[up.port], dir.path(), limits).await;
    let base = nginx.url();
    // The rate (1/min) and its burst (2): three creations pass, then none.
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = http.post(format!("{base}/api/sessions")).send().await;
        statuses.push(response.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // A socket without a session creates one: refused the same way.
    assert_rate_limited(&format!("{base}/ws/chat")).await;
    // Requests that name a session, and other paths, are not creations.
    for path in [
        "/ws/chat?session=x",
        "/api/history?session=x",
        "/api/sessions/x",
    ] {
        assert_eq!(
            http_get(&format!("{base}{path}")).await.unwrap().0,
            200,
            "{path}"
        );
    }
}

/// A GET Nginx refuses with 429 and the protocol's JSON `rate_limited`.
async fn assert_rate_limited(url: &str) {
    let refused = http_get_full(url, &[]).await.unwrap();
    assert_eq!(refused.status, 429, "{url}");
    assert!(
        refused.body.contains(r#""code":"rate_limited""#),
        "{url}: {}",
        refused.body
    );
}
