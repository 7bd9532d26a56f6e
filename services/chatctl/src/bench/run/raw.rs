//! The raw NATS phase: what core NATS and JetStream do on this machine
//! without the system, the yardsticks the end-to-end figures are set
//! against.

use super::super::cpu::CpuSnapshot;
use super::super::raw_nats::{self, NatsTarget};
use super::super::report::{thousands, Report, Row};
use super::super::BenchArgs;
use super::Settings;

/// Core pub/sub, pipelined JetStream publishes on one subject, and the same
/// spread over the end-to-end run's subjects and republished. Returns the
/// pipelined JetStream rate.
pub(super) async fn raw_phase(
    args: &BenchArgs,
    s: &Settings,
    report: &mut Report,
    nats: &NatsTarget<'_>,
) -> anyhow::Result<f64> {
    println!("raw NATS on {}", nats.url);
    let core = raw_nats::core_pub_sub(nats, s.core_messages, args.payload_bytes).await?;
    let mut row = Row::rate(
        format!("core NATS pub → sub, {} B, one process", args.payload_bytes),
        "msgs_per_sec",
        core.per_sec,
        "msg/s",
    );
    if core.received < core.sent {
        row.display
            .push_str(&format!(" ({} of {} arrived)", core.received, core.sent));
    }
    report.push(row);
    let cpu_before = CpuSnapshot::take();
    let js = raw_nats::jetstream_pipelined(nats, s.js_messages, args.payload_bytes, args.js_window)
        .await?;
    let cpu = CpuSnapshot::take().since(&cpu_before);
    report.push(Row::rate(
        format!(
            "JetStream publish, file storage, pipelined ({} in flight), {} B",
            args.js_window, args.payload_bytes
        ),
        "msgs_per_sec",
        js,
        "msg/s",
    ));
    let per_message_us = |name: &str| per_message_us_of(&cpu, name, s.js_messages);
    report.push(Row::text(
        "CPU per pipelined JetStream publish, µs",
        vec![
            ("nats_server_us".into(), per_message_us("nats-server")),
            ("bench_us".into(), per_message_us("bench")),
        ],
        format!(
            "nats-server {:.1}, publisher {:.1}",
            per_message_us("nats-server"),
            per_message_us("bench")
        ),
    ));
    // The same publishes in the end-to-end run's shape: one subject per
    // session, each republished to a subscriber. What nats-server spends
    // on that is its share of an end-to-end chunk without the system.
    let spread = raw_nats::Spread {
        subjects: s.sessions.max(2),
        republish: true,
    };
    let cpu_before = CpuSnapshot::take();
    let republished = raw_nats::pipelined(
        nats,
        s.js_messages,
        args.payload_bytes,
        args.js_window,
        spread,
    )
    .await?;
    let cpu = CpuSnapshot::take().since(&cpu_before);
    let nats_us = per_message_us_of(&cpu, "nats-server", s.js_messages);
    let bench_us = per_message_us_of(&cpu, "bench", s.js_messages);
    report.push(Row::text(
        format!(
            "JetStream publish, pipelined over {} subjects, republished to a subscriber (the end-to-end run's shape), {} B",
            spread.subjects, args.payload_bytes
        ),
        vec![
            ("msgs_per_sec".into(), republished.per_sec),
            ("received".into(), republished.received as f64),
            ("nats_server_us".into(), nats_us),
            ("bench_us".into(), bench_us),
        ],
        format!(
            "{} msg/s; nats-server {nats_us:.1} µs each, publisher and subscriber {bench_us:.1}",
            thousands(republished.per_sec)
        ),
    ));
    Ok(js)
}

/// A process's CPU over `messages`, µs each.
fn per_message_us_of(
    cpu: &std::collections::BTreeMap<String, f64>,
    name: &str,
    messages: u64,
) -> f64 {
    cpu.get(name).copied().unwrap_or(0.0) * 1e6 / messages.max(1) as f64
}
