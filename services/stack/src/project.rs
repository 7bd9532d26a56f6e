//! Where the project's files are: the source tree (Nginx template, built
//! web UI) and the built `gateway` and `worker` binaries.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

/// The workspace root, found from this crate's manifest at build time
/// (`CHAT_PROJECT_DIR` overrides it).
pub fn project_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHAT_PROJECT_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The folder holding the `gateway` and `worker` binaries: `CHAT_BIN_DIR`,
/// else the folder of the running executable (a test's `target/debug/deps/x`
/// → `target/debug`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("CHAT_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("finding the running executable")?;
            let mut dir = exe
                .parent()
                .ok_or_else(|| anyhow!("{} has no folder", exe.display()))?
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    for name in ["gateway", "worker"] {
        if !dir.join(name).is_file() {
            bail!(
                "the {name} binary is not in {}: run `cargo build --workspace` first \
                 (or set CHAT_BIN_DIR to the folder holding gateway and worker)",
                dir.display()
            );
        }
    }
    Ok(dir)
}
