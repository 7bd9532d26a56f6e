//! `chatctl`: a tool that talks to the chat backend as browsers do, to
//! prove its guarantees under faults. The library holds everything (tests
//! use it); `main.rs` only parses flags.
//!
//! - [`client`]: a WebSocket chat client that reconnects with `after_seq`;
//! - [`verify`]: what a client saw against the session's stream;
//! - [`faults`]: a seeded fault schedule;
//! - [`recovery`]: the `recovery` subcommand;
//! - [`soak`]: the `soak` subcommand, an hour of mixed load with faults;
//! - [`cluster`]: `cluster up|down`, a 3-node NATS cluster left running;
//! - [`credentials`]: the NATS credentials (and TLS files) in run/;
//! - [`handout`]: the credentials handed out to the compose deployment's containers.
//! - [`layout`]: `layout apply|check`, the JetStream layout (operations' job).

pub mod backoff;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod credentials;
pub mod faults;
pub mod handout;
pub mod layout;
pub mod recovery;
pub mod soak;
pub mod token;
pub mod verify;

/// The tool's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "chatctl",
    about = "Operations and recovery runs for the chat backend"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Chat from many sessions while faults hit the system, then verify
    /// every session against its stream; exits non-zero on any violation.
    Recovery(recovery::RecoveryArgs),
    /// Chat with mixed load for a long time (an hour by default) while a
    /// seeded fault hits every few minutes; audit every session, sample
    /// every process and the store, write a CSV and a PNG; exits non-zero
    /// on any violation, growth beyond the bounds or retention exceeded.
    Soak(soak::SoakArgs),
    /// Measure the whole system under load next to raw NATS on the same
    /// server; prints a markdown table (and JSON with --json-out); exits
    /// non-zero if any event was lost or doubled.
    Bench(bench::BenchArgs),
    /// Start (up) or stop (down) a 3-node NATS cluster, each node a host of
    /// its own (network namespaces) where the machine allows it; state in
    /// run/cluster/.
    Cluster(cluster::ClusterArgs),
    /// Make the NATS credentials (an nkey per role, the routes' password;
    /// a local CA with --tls) if missing, and render a server config.
    Credentials(credentials::CredentialsArgs),
    /// Apply (create or update) the JetStream layout, or check the server's
    /// against this configuration (exit 1 on any difference). Same CHAT_*
    /// flags and environment variables as the gateways and workers.
    Layout(layout::LayoutArgs),
    /// Mint a JWT for GATEWAY_AUTH=jwt with the gateways' HMAC secret
    /// (development and tests): chatctl token --sub alice --ttl 1h.
    Token(token::TokenArgs),
}

/// Runs a parsed command; the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Bench(args) => {
            bench::run(args).await?;
            Ok(0)
        }
        Command::Cluster(args) => {
            cluster::run(args).await?;
            Ok(0)
        }
        Command::Credentials(args) => {
            credentials::run(args)?;
            Ok(0)
        }
        Command::Layout(args) => layout::run(args).await,
        Command::Token(args) => {
            token::run(&args)?;
            Ok(0)
        }
        Command::Recovery(args) => {
            let report = recovery::run(&args).await?;
            println!("{}", report.to_markdown());
            if args.json {
                println!("{}", report.to_json());
            }
            Ok(if report.passed() { 0 } else { 1 })
        }
        Command::Soak(args) => {
            if let Some(csv) = &args.judge {
                let verdict = soak::judge_earlier_run(&args, csv)?;
                println!("{}", verdict.to_markdown());
                return Ok(if verdict.passed() { 0 } else { 1 });
            }
            let report = soak::run(&args).await?;
            println!("{}", report.to_markdown());
            Ok(if report.passed() { 0 } else { 1 })
        }
    }
}
