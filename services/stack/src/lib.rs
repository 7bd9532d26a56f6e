//! Real processes of the system, started and stopped for tests and tools.
//! Everything started here is killed when its handle drops.
//!
//! - [`stack`]: the whole system ([`Stack`]): nats-server, N gateways, M
//!   workers and Nginx, each on a free loopback port.
//! - [`nats`]: one nats-server with JetStream in a temporary store.
//! - [`cluster`]: a 3-node JetStream cluster, nodes killed, restarted in
//!   lame-duck mode, partitioned; who leads a stream; replica convergence.
//! - [`hosts`]: hosts of their own (network namespaces on a bridge) and
//!   nftables cuts and lossy links between them.
//! - [`loss`]: lossy links on loopback (nftables by port).
//! - [`disk`]: a store on a small filesystem of its own, filled and freed.
//! - [`nginx`]: Nginx from the project's template in front of some upstreams.
//! - [`local_model`]: a real language model server (`scripts/local-model.sh`)
//!   the workers can be pointed at.
//! - `services` (inside): our `gateway` and `worker` binaries as processes.
//! - `process` (inside): a child process's lifecycle: ready line, SIGTERM,
//!   SIGKILL, kill on drop.
//! - [`layout`]: the JetStream layout applied before services start.
//! - [`http`]: GETs on loopback URLs (health, metrics, REST) with reqwest.
//! - [`otlp`]: an OTLP/gRPC receiver keeping the spans services export.
//! - [`project`], [`ports`]: where the binaries and project files are; free ports.

pub mod cluster;
pub mod disk;
pub mod hosts;
pub mod http;
pub mod layout;
pub mod local_model;
pub mod loss;
pub mod nats;
pub mod nginx;
pub mod otlp;
pub mod ports;
mod process;
pub mod project;
mod services;
pub mod stack;

pub use crate::cluster::{ClusterOptions, HostsChoice, NatsCluster};
pub use crate::http::{http_get, http_get_full, wait_healthy, HttpResponse};
pub use crate::local_model::LocalModel;
pub use crate::nats::NatsServer;
pub use crate::nginx::{Nginx, NginxConfig, NginxLimits};
pub use crate::process::send_signal;
pub use crate::stack::{Stack, StackOptions};
