//! What every job of this worker shares. A module of its own so that the job
//! steps, turn recording and dead-lettering all read it without importing
//! one another.

use std::sync::Arc;

use async_nats::jetstream;
use protocol::connect::ConnectionWatch;
use protocol::setup::{Layout, LayoutConfig};
use tokio_util::sync::CancellationToken;

use crate::backends::ModelBackend;
use crate::cancel::CancelRegistry;
use crate::chunk_window::ChunkWindow;

/// What every job of this worker shares.
pub struct JobContext {
    pub js: jetstream::Context,
    /// Connection losses: an attempt whose publish acks were outstanding
    /// when the connection went fails at once instead of at the ack timeout.
    pub connection: ConnectionWatch,
    pub layout: Layout,
    pub layout_config: LayoutConfig,
    pub backend: Arc<dyn ModelBackend>,
    /// How long a chunk gathers tokens, adapting to the path's backlog.
    pub chunk_window: Arc<ChunkWindow>,
    pub chunk_max_bytes: usize,
    pub cancels: CancelRegistry,
    /// Fires when the shutdown grace is over: running jobs are handed back.
    pub abort: CancellationToken,
    /// This worker's name, on every job span.
    pub node: String,
    /// Test hook `--test-admit-pause-ms`: zero in service.
    pub admit_pause: std::time::Duration,
    /// Test hook `--test-claim-pause-ms`: zero in service.
    pub claim_pause: std::time::Duration,
}
