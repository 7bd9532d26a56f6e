//! The gateway as a whole: shared state, the router, and starting and
//! stopping it (`spawn` / `RunningGateway`), used by `main` and by tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use axum::extract::{DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::serve::ListenerExt;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use protocol::connect::{ConnectionLost, ConnectionWatch};
use protocol::setup::Layout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::live::LiveHub;
use crate::test_hooks::TestHooks;
use crate::{metrics, origin, rest, socket, ui_stream};

/// What every handler and socket shares: one pointer, because every
/// socket's tasks hold a copy and the streams' cached info alone is
/// kilobytes (`chatctl bench --only idle` measures memory per connection).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub client: async_nats::Client,
    /// Connection losses: a request whose replies can no longer come (the
    /// connection it was sent on is gone) fails at once, not at its
    /// time-out, so the client's retry comes within the reconnect.
    pub connection: ConnectionWatch,
    pub js: jetstream::Context,
    pub layout: Layout,
    pub config: Arc<GatewayConfig>,
    pub node: String,
    pub hub: LiveHub,
    /// `CHAT_EVENTS`'s first and last sequence, shared by every replay.
    pub stream_bounds: crate::replay::StreamBounds,
    /// Fires on shutdown: every socket closes with 1012.
    pub shutdown: CancellationToken,
    pub sockets: TaskTracker,
    pub metrics: PrometheusHandle,
    /// Faults tests ask for (hidden flags; none by default).
    pub test_hooks: TestHooks,
    /// The app's token verifier, in `GATEWAY_AUTH=jwt` mode only.
    pub verifier: Option<Arc<crate::jwt::Verifier>>,
    /// The session lists of the users with sockets here (`jwt` mode).
    pub user_feeds: crate::user_feed::UserFeeds,
}

impl Shared {
    /// Runs a NATS request that may reach the server twice without harm (a
    /// read, a deduplicated publish, a compare-and-set), asking again on the
    /// new connection when the one it was sent on is lost: the client that
    /// waits on it then waits for the reconnect, not for the request's
    /// time-out (5 s, longer than a client waits for `ready`).
    pub async fn retry_when_lost<T, F, Fut>(&self, mut request: F) -> Result<T, ConnectionLost>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        // The test hook loses the first try's reply only.
        let mut lose_first = self.test_hooks.lose_nats_reply();
        self.connection
            .retry_when_lost(|| {
                let lose = std::mem::take(&mut lose_first);
                let asked = request();
                async move {
                    if lose {
                        // The server did what was asked, and the reply is
                        // lost with its connection (the gateway reconnects
                        // at once): the worst case for a request asked again.
                        drop(asked.await);
                        if let Err(e) = self.client.force_reconnect().await {
                            tracing::warn!(error = %e, "test hook: dropping the connection");
                        }
                        return std::future::pending().await;
                    }
                    asked.await
                }
            })
            .await
    }

    /// [`Shared::retry_when_lost`] for a request that fails as an [`ApiError`].
    pub async fn retry_api_call<T, F, Fut>(&self, request: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        self.retry_when_lost(request)
            .await
            .map_err(ApiError::nats)?
    }
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .route("/ws/chat", get(ws_chat))
        .route(
            "/api/sessions/{id}",
            delete(rest::delete_session).patch(rest::rename_session),
        )
        .route("/api/users/me/sockets", delete(rest::revoke_user_sockets))
        .route("/api/chat", post(rest::post_chat))
        .route("/api/regenerate", post(rest::post_regenerate))
        .route("/api/cancel", post(rest::post_cancel))
        .route("/api/history", get(rest::get_history))
        .route("/api/events", get(rest::get_events))
        .route("/health", get(rest::health))
        .route("/metrics", get(rest::metrics))
        // `POST /api/sessions` and the AI SDK endpoints, with CORS when
        // `--cors-origins` lists sites.
        .merge(ui_stream::router(&state))
        .fallback(rest::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        // The path only, never the query: an old client's `?token=` must not
        // reach a log at any level.
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |request: &axum::http::Request<axum::body::Body>| {
                    tracing::debug_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                    )
                },
            ),
        )
        .with_state(state)
}

async fn ws_chat(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<socket::SocketQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(refused) = origin::check(&headers, &state.config.allowed_origins) {
        return refused.into_response();
    }
    let max = state.config.max_frame_bytes;
    let tracker = state.sockets.clone();
    // Small socket buffers: a chat frame is small, and axum's 128 KiB
    // defaults would dominate the memory of an idle connection. Frames
    // queued together (a burst of chunks, a replay) leave in one write of
    // up to SOCKET_WRITE_BUFFER.
    upgrade
        .read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(SOCKET_WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| tracker.track_future(socket::serve(socket, state, query)))
}

/// Bytes a socket reads at a time; larger frames still arrive whole.
const SOCKET_READ_BUFFER: usize = 1024;
/// Bytes of queued frames that make the socket write before a flush.
const SOCKET_WRITE_BUFFER: usize = 16 * 1024;

/// A gateway that is running.
pub struct RunningGateway {
    addr: SocketAddr,
    node: String,
    state: AppState,
    server: tokio::task::JoinHandle<()>,
    grace: Duration,
}

impl RunningGateway {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Graceful stop, as on SIGTERM: no new connections, every socket gets
    /// close 1012 (clients reconnect elsewhere with `after_seq`), in-flight
    /// REST calls finish; bounded by the shutdown grace.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.state.shutdown.cancel();
        self.state.sockets.close();
        let drained = async {
            let _ = self.server.await;
            self.state.sockets.wait().await;
        };
        if tokio::time::timeout(self.grace, drained).await.is_err() {
            tracing::warn!("shutdown grace over with connections still open");
        }
        let _ = self.state.client.flush().await;
        tracing::info!(node = %self.node, "gateway stopped");
        Ok(())
    }
}

/// Connects to NATS, verifies the layout, and serves on `config.listen`.
pub async fn spawn(config: GatewayConfig) -> anyhow::Result<RunningGateway> {
    let verifier = match config.auth.mode {
        crate::config::AuthMode::Jwt => Some(Arc::new(
            crate::jwt::Verifier::from_config(&config.auth)
                .await
                .context("GATEWAY_AUTH=jwt")?,
        )),
        crate::config::AuthMode::Session => None,
    };
    let metrics_handle = telemetry::install_metrics();
    metrics::register();
    let node = config.node();
    let (options, connection) = protocol::connect::options(&node);
    let options = config
        .nats_access
        .apply(protocol::access::Role::Gateway, options)?;
    let client = options
        .connect(protocol::connect::seed_list(&config.nats_url))
        .await
        .with_context(|| format!("connecting to {}", config.nats_url))?;
    let js = jetstream::new(client.clone());
    // Operations own the layout (`chatctl layout apply`): a service only
    // reads it, and refuses to start on one that differs from its flags.
    let layout =
        protocol::setup::verify_when_ready(&js, &config.layout, protocol::setup::SETUP_PATIENCE)
            .await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let grace = config.shutdown_grace();
    let hub = LiveHub::new(
        client.clone(),
        connection.clone(),
        config.recent_events,
        config.test_drop_live_every,
        config.max_sockets_per_session,
    );
    let test_hooks = TestHooks::new(&config);
    let state = AppState(Arc::new(Shared {
        client: client.clone(),
        connection,
        js,
        layout,
        config: Arc::new(config),
        node: node.clone(),
        hub,
        stream_bounds: Default::default(),
        shutdown: CancellationToken::new(),
        sockets: TaskTracker::new(),
        metrics: metrics_handle,
        test_hooks,
        verifier,
        user_feeds: crate::user_feed::UserFeeds::new(client.clone()),
    }));
    state
        .hub
        .listen_for_revocations()
        .await
        .context("subscribing to revocations")?;
    watch_nats(client, state.shutdown.clone());
    let app = router(state.clone());
    let stop = state.shutdown.clone();
    let server = tokio::spawn(async move {
        // Every chunk is a small write that must leave at once: no Nagle delay.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "setting TCP_NODELAY");
            }
        });
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    tracing::info!(%node, %addr, "gateway started");
    Ok(RunningGateway {
        addr,
        node,
        state,
        server,
        grace,
    })
}

/// Keeps the `chat_gateway_nats_connected` gauge current for alerting.
fn watch_nats(client: async_nats::Client, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => metrics::nats_connected(
                    client.connection_state() == async_nats::connection::State::Connected,
                ),
            }
        }
    });
}
