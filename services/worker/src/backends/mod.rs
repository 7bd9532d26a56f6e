//! The model a worker talks to, behind one small trait.
//!
//! A backend turns a [`Generation`] into a stream of [`ModelOutput`]s.
//! Cancelling is dropping the stream: a backend must stop its work (close
//! its HTTP connection, stop its timer) when its stream is dropped.

use std::time::Duration;

use futures::stream::BoxStream;
use protocol::records::Turn;
use protocol::{FinishReason, Usage};

pub mod demo;
pub mod openai;

/// What a backend is asked to answer.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The user's question.
    pub prompt: String,
    /// Earlier finished turns of the session, oldest first, for backends that
    /// send the conversation as context (empty when the backend wants none).
    pub history: Vec<Turn>,
    /// The model the client asked for; `None` = the backend's default.
    pub model: Option<String>,
}

/// One step of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelOutput {
    /// The next token (or any piece of text) of the answer.
    Token(String),
    /// The next piece of a reasoning model's thinking, before its answer.
    /// Not part of the answer: it is not sent back to the model as context.
    Reasoning(String),
    /// The answer is complete. Always the last item of a successful stream.
    Finished {
        finish_reason: FinishReason,
        usage: Option<Usage>,
    },
}

/// Why a backend failed, and whether trying again may help.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The request itself is wrong (a 4xx other than 429), or the server
    /// gave up on the answer (an `error` inside the stream) or broke a bound
    /// (an event too large): retrying gives the same answer, so the job
    /// fails with `model_failed` at once.
    #[error("model refused the request: {0}")]
    Rejected(String),
    /// A passing failure (429, 5xx, refused connection, timeout): the job is
    /// naked with a delay so another attempt, maybe on another worker, tries.
    #[error("model unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
}

pub type OutputStream = BoxStream<'static, Result<ModelOutput, BackendError>>;

/// A model backend.
pub trait ModelBackend: Send + Sync + 'static {
    /// A short name for logs and metrics labels (`demo`, `openai`).
    fn name(&self) -> &'static str;

    /// How many earlier turns the backend wants as context (0 = none), so
    /// the worker reads `CHAT_HISTORY` only when it is needed.
    fn context_turns(&self) -> usize {
        0
    }

    /// Whether the backend serves `model` (a client's choice).
    fn serves_model(&self, model: &str) -> bool;

    /// Starts an answer. Dropping the stream cancels it.
    fn generate(&self, generation: Generation) -> OutputStream;
}
