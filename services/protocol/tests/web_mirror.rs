//! The browser client's copy of the protocol's names (`web/src/chat/protocol.ts`)
//! is generated from the Rust types here, and this test fails when the
//! committed file differs from what the types say now. Regenerate it with
//! `UPDATE_WEB_PROTOCOL=1 cargo test -p protocol --test web_mirror`.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::fmt::Write;
use std::path::PathBuf;

use protocol::{ClientFrame, CloseCode, ControlKind, ErrorCode, EventKind};

const REGENERATE: &str = "UPDATE_WEB_PROTOCOL=1 cargo test -p protocol --test web_mirror";

fn mirror_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web/src/chat/protocol.ts")
}

/// `'a', 'b'` for a list of wire strings.
fn quoted(items: impl IntoIterator<Item = &'static str>) -> String {
    items
        .into_iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The TypeScript text of `web/src/chat/protocol.ts`.
fn render() -> String {
    let mut ts = String::new();
    let mut line = |text: &str| {
        ts.push_str(text);
        ts.push('\n');
    };
    line("// Generated from services/protocol by services/protocol/tests/web_mirror.rs: do not");
    line("// edit. After changing a close code, an event kind, an error code or a frame type");
    line("// in Rust, regenerate it with");
    line(&format!("//   {REGENERATE}"));
    line("// What each name means and when the gateway sends it: docs/PROTOCOL.md.");
    line("");
    line("/** WebSocket close codes a gateway sends (docs/PROTOCOL.md, \"Close codes\"). */");
    line("export const CloseCode = {");
    for code in CloseCode::ALL {
        line(&format!("  {}: {},", code.name(), code.code()));
    }
    line("} as const;");
    line("export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];");
    line("");
    line("/** The `type` of each event stored in CHAT_EVENTS: the frames that carry a `seq`. */");
    line("export const EventKind = {");
    for kind in EventKind::ALL {
        line(&format!(
            "  {}: '{}',",
            kind.as_str().to_ascii_uppercase(),
            kind.as_str()
        ));
    }
    line("} as const;");
    line("export type EventKind = (typeof EventKind)[keyof typeof EventKind];");
    line(&format!(
        "export const EVENT_KINDS: readonly EventKind[] = [{}];",
        quoted(EventKind::ALL.map(EventKind::as_str))
    ));
    line("");
    line(
        "/** The `type` of each frame a gateway makes itself (none carries a `seq` of its own). */",
    );
    line(&format!(
        "export const CONTROL_FRAME_TYPES = [{}] as const;",
        quoted(ControlKind::ALL.map(ControlKind::as_str))
    ));
    line("export type ControlFrameType = (typeof CONTROL_FRAME_TYPES)[number];");
    line("");
    line("/** The `type` of each frame a client may send. */");
    line(&format!(
        "export const CLIENT_FRAME_TYPES = [{}] as const;",
        quoted(ClientFrame::KINDS)
    ));
    line("export type ClientFrameType = (typeof CLIENT_FRAME_TYPES)[number];");
    line("");
    line(
        "/** Codes of `error` frames and REST error bodies (docs/PROTOCOL.md, \"Error codes\"). */",
    );
    let mut codes = String::new();
    for code in ErrorCode::ALL {
        let _ = write!(codes, "\n  '{}',", code.as_str());
    }
    line(&format!("export const ERROR_CODES = [{codes}\n] as const;"));
    line("export type KnownErrorCode = (typeof ERROR_CODES)[number];");
    ts
}

#[test]
fn the_web_client_mirrors_the_rust_protocol() {
    let path = mirror_path();
    let expected = render();
    if std::env::var_os("UPDATE_WEB_PROTOCOL").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; generate it with `{REGENERATE}`", path.display()));
    assert!(
        committed == expected,
        "{} is not what services/protocol says; regenerate it with `{REGENERATE}`\n\
         --- expected ---\n{expected}",
        path.display()
    );
}
