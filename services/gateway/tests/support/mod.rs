//! The one harness of the gateway's tests: a real nats-server and the
//! gateway in-process on free ports ([`TestApp`]), with no worker, a
//! scripted worker (the gateway alone decides) or the real worker (the
//! behaviour crosses the queue); one WebSocket client ([`Ws`]) and one set
//! of assertions.

#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod app;
mod assertions;
pub mod login;
mod scripted_worker;
pub mod sse;
mod ws;

pub use app::{gateway_config, TestApp, ANSWER_TOKENS};
pub use assertions::{answer, assert_rest_error, assert_strictly_increasing, count, eventually};
pub use scripted_worker::{Script, ScriptedWorker};
pub use ws::{Received, Ws};

/// How long a test waits for any one thing before it fails.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(15);
