//! A hostile model server cannot grow the worker: a 50 MiB line is refused
//! at the event bound (1 MiB) without being held, and the server is cut off
//! long before it has sent it all. Alone in its test binary, so the
//! process's peak memory is this test's.
#![allow(clippy::unwrap_used)]

mod openai_support;

use openai_support::{args, collect, sse, Script, ScriptedServer, Step, WAIT};
use worker::backends::openai::OpenAiBackend;
use worker::backends::{BackendError, Generation, ModelBackend};

const MIB: usize = 1 << 20;

/// A field of `/proc/self/status`, in bytes (`VmHWM`: peak resident memory).
fn proc_status_bytes(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_50_mib_line_is_refused_without_being_buffered() {
    let flood = 50 * MIB;
    let server = ScriptedServer::start(vec![Script::Raw(vec![
        Step::Send(sse::content("ok")),
        Step::Send("data: ".into()),
        Step::Flood { bytes: flood },
    ])])
    .await;
    let backend = OpenAiBackend::new(args(&server.base_url())).unwrap();
    // The peak so far is forgotten (Linux ≥ 4.0): what follows is measured
    // from the memory the process holds now.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let baseline = proc_status_bytes("VmHWM:");

    let (tokens, last) = collect(backend.generate(Generation {
        prompt: "q".into(),
        history: Vec::new(),
        model: None,
    }))
    .await;
    assert_eq!(tokens, ["ok"]);
    match last {
        Err(BackendError::Rejected(message)) => {
            assert!(message.contains("over 1048576 bytes"), "{message}")
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    server.wait_all_closed(WAIT).await;

    let sent = server.bytes_sent();
    assert!(
        sent < flood / 2,
        "the server was cut off after {} MiB of {} MiB",
        sent / MIB,
        flood / MIB
    );
    let grown = proc_status_bytes("VmHWM:").saturating_sub(baseline);
    assert!(
        grown < 16 * MIB,
        "peak memory grew by {} MiB reading a refused line",
        grown / MIB
    );
}
