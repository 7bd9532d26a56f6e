//! `stack::http` against a raw HTTP/1.1 server on a loopback port: what the
//! callers rely on (any status is an answer, chunked bodies come whole,
//! header names in lower case, request headers sent, a closed port is an
//! error).

#![allow(clippy::unwrap_used)]

use stack::http::{http_get, http_get_full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves one connection: answers with `answer` and hands back the request head.
async fn answer_once(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed before ending its request");
            head.extend_from_slice(&chunk[..n]);
        }
        socket.write_all(answer.as_bytes()).await.unwrap();
        socket.shutdown().await.unwrap();
        String::from_utf8(head).unwrap()
    });
    (url, server)
}

#[tokio::test]
async fn a_chunked_error_answer_comes_whole_with_its_headers() {
    let (url, server) = answer_once(
        "HTTP/1.1 503 Service Unavailable\r\nX-Node: gw-1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await;
    let response = http_get_full(&format!("{url}/health"), &[("Authorization", "Bearer t0k")])
        .await
        .unwrap();
    assert_eq!((response.status, response.body.as_str()), (503, "abcde"));
    assert_eq!(response.header("x-node"), Some("gw-1"));
    let request = server.await.unwrap().to_ascii_lowercase();
    assert!(request.starts_with("get /health http/1.1\r\n"), "{request}");
    assert!(
        request.contains("\r\nauthorization: bearer t0k\r\n"),
        "{request}"
    );
}

#[tokio::test]
async fn a_plain_answer_gives_status_and_body() {
    let (url, server) = answer_once("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    assert_eq!(http_get(&url).await.unwrap(), (200, "ok".to_string()));
    server.await.unwrap();
}

#[tokio::test]
async fn a_closed_port_is_an_error_naming_the_url() {
    let port = stack::ports::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}/health");
    let error = http_get(&url).await.unwrap_err();
    assert!(format!("{error:#}").contains(&url), "{error:#}");
}
