//! `docs/PROTOCOL.md` is the wire contract: it names every close code, error
//! code, event kind and frame type the Rust types define, so adding one
//! without documenting it fails here.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::path::PathBuf;

use protocol::{ClientFrame, CloseCode, ControlKind, ErrorCode, EventKind};

#[test]
fn the_protocol_document_names_every_code_and_kind() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let mut names: Vec<String> = Vec::new();
    for code in CloseCode::ALL {
        names.push(code.code().to_string());
        names.push(code.name().to_string());
    }
    names.extend(ErrorCode::ALL.map(|c| c.as_str().to_string()));
    names.extend(EventKind::ALL.map(|k| k.as_str().to_string()));
    names.extend(ControlKind::ALL.map(|k| format!("{{\"type\":\"{}\"", k.as_str())));
    names.extend(ClientFrame::KINDS.map(|k| format!("{{\"type\":\"{k}\"")));
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !doc.contains(&format!("`{name}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} does not name {missing:?}",
        path.display()
    );
}
