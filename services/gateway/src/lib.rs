//! The gateway: the browsers' WebSocket and REST entry point. It never calls
//! a model: chats go to the JetStream work-queue, answers come back as the
//! session's stored events, live (the republished core subject) or replayed
//! from the stream.
//!
//! [`spawn`] starts it from a [`GatewayConfig`]; `main` is a few lines.

pub mod app;
pub mod auth;
pub mod chat;
pub mod config;
pub mod error;
pub mod extract;
pub mod jwt;
pub mod live;
pub mod metrics;
pub mod origin;
pub mod regenerate;
pub mod replay;
pub mod rest;
pub mod socket;
pub mod test_hooks;
pub mod ui_stream;
pub mod user_feed;
pub mod users;

pub use app::{spawn, RunningGateway};
pub use config::GatewayConfig;
