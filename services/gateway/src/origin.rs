//! Which pages may open `/ws/chat`. A browser sends `Origin` with every
//! WebSocket handshake and, unlike `fetch`, never asks the server first
//! (no CORS preflight), so without this check any site a user visits could
//! open a socket to the gateway in the user's name. Same-origin by default
//! (the `Origin`'s host and port are the `Host` the request came to, which
//! Nginx passes on with its port), plus an allow-list (`--allowed-origins`).
//! A handshake without `Origin` is not from a browser page and is let
//! through: the token still decides.

use axum::http::{header, HeaderMap};

use crate::error::ApiError;

/// Refuses a handshake sent by a page of another site.
pub fn check(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim();
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if same_authority(origin, host) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "a page from {origin} may not open this socket"
    )))
}

/// Whether `origin` (`scheme://host[:port]`) names `host` (`host[:port]`),
/// a scheme's default port written or not.
fn same_authority(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // "null" (a sandboxed page or a file) or garbage
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        // An IPv6 literal's colons are inside brackets.
        let has_port = match a.rfind(']') {
            Some(end) => a[end..].contains(':'),
            None => a.contains(':'),
        };
        if has_port {
            a
        } else {
            format!("{a}:{default_port}")
        }
    };
    !host.is_empty() && with_port(authority) == with_port(host)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        h
    }

    #[test]
    fn same_origin_and_no_origin_pass_other_sites_do_not() {
        let none: Vec<String> = Vec::new();
        let pass = [
            (None, "127.0.0.1:8080"),
            (Some("http://127.0.0.1:8080"), "127.0.0.1:8080"),
            (Some("https://Chat.Example.com"), "chat.example.com"),
            (Some("https://chat.example.com:443"), "chat.example.com"),
            (Some("http://[::1]:8080"), "[::1]:8080"),
        ];
        for (origin, host) in pass {
            assert!(
                check(&headers(origin, host), &none).is_ok(),
                "{origin:?} {host}"
            );
        }
        let refuse = [
            (Some("http://evil.example"), "127.0.0.1:8080"),
            (Some("http://127.0.0.1:9999"), "127.0.0.1:8080"),
            (Some("https://127.0.0.1:8080"), "127.0.0.1:8080:443"),
            (Some("null"), "127.0.0.1:8080"),
            (
                Some("http://chat.example.com.evil.example"),
                "chat.example.com",
            ),
        ];
        for (origin, host) in refuse {
            let refused = check(&headers(origin, host), &none);
            assert!(
                matches!(refused, Err(ApiError::Forbidden(_))),
                "{origin:?} {host}"
            );
        }
    }

    #[test]
    fn the_allow_list_lets_a_named_site_in() {
        let allowed = vec!["https://app.example.com".to_string()];
        let h = headers(Some("https://app.example.com"), "api.example.com");
        assert!(check(&h, &allowed).is_ok());
        let h = headers(Some("https://other.example.com"), "api.example.com");
        assert!(check(&h, &allowed).is_err());
    }
}
