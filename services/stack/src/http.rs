//! Plain GETs on the stack's loopback URLs (`/health`, `/metrics`, REST
//! pages, Nginx's routing) with reqwest: the status, the headers and the
//! body as text, whatever the status.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};

/// How long one GET may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One client for every GET of the process. Its connection pool is off:
/// each `#[tokio::test]` runs its own runtime, and a pooled connection
/// belongs to the runtime that opened it (reusing it from the next test
/// fails). Without a pool, nothing outlives the request. No proxy either:
/// the URLs are loopback and an `HTTP_PROXY` in the environment must not
/// route them elsewhere.
fn client() -> anyhow::Result<&'static reqwest::Client> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    Ok(CLIENT.get_or_init(|| client))
}

/// `GET url`: the status code and the body.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    http_get_full(url, &[]).await.map(|r| (r.status, r.body))
}

/// [`http_get`] with extra request headers (e.g. `Authorization`), returning
/// the response headers too.
pub async fn http_get_full(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<HttpResponse> {
    let mut request = client()?.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), value)
        })
        .collect();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("GET {url}: reading the body"))?;
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Waits until `GET url` answers 200, or fails after `timeout` with the last
/// answer or error.
pub async fn wait_healthy(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match http_get(url).await {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => format!("{status} {body}"),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("{url} did not answer 200 within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
