//! Loopback ports for the processes of a stack.

use std::net::TcpListener;

use anyhow::Context;

/// A port that was free a moment ago: bound on 127.0.0.1:0, then released.
/// Another process may take it before ours binds it; callers that can,
/// retry with a fresh one ([`crate::nginx::Nginx::start`] does).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
