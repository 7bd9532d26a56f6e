//! A small filesystem of its own for a JetStream store (a `tmpfs` mounted
//! with `size=`), so a test can fill it with a ballast file (the disk is
//! full) and free it again, without touching the machine's real disks.
//! Mounting needs root; callers leave the disk-full fault out otherwise.
//! Dropping it removes the ballast and unmounts (lazily, in case a process
//! still holds a file open).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::process::run;

/// The size of a store's filesystem when a caller asks for one without
/// saying: room for a recovery run's streams many times over, and little
/// memory (a tmpfs only holds what is written to it; the ballast only
/// while the disk is full).
pub const DEFAULT_STORE_BYTES: u64 = 256 * 1024 * 1024;

/// The ballast's name inside the filesystem.
const BALLAST: &str = "ballast";

/// A mounted small filesystem.
#[derive(Debug)]
pub struct SmallDisk {
    mount: PathBuf,
    /// The ballast lives in its own folder next to the store's files, so
    /// nothing in the store is ever touched.
    ballast_dir: PathBuf,
    store: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` at `mount` (created if missing). The
    /// store goes in its `store/` folder ([`SmallDisk::store_dir`]).
    pub fn mount(mount: &Path, bytes: u64) -> anyhow::Result<Self> {
        if !is_root() {
            bail!("a store on a filesystem of its own needs root (mount -t tmpfs)");
        }
        std::fs::create_dir_all(mount)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("tmpfs")
            .arg(mount))
        .context("mounting a tmpfs for the store")?;
        let disk = Self {
            mount: mount.to_path_buf(),
            ballast_dir: mount.join("ballast"),
            store: mount.join("store"),
        };
        std::fs::create_dir_all(&disk.store)?;
        std::fs::create_dir_all(&disk.ballast_dir)?;
        Ok(disk)
    }

    /// Where the JetStream store goes.
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// Writes a ballast file until the filesystem has no byte left;
    /// returns its size.
    pub fn fill(&self) -> anyhow::Result<u64> {
        let path = self.ballast_dir.join(BALLAST);
        let mut file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        // A short write means the filesystem is nearly full; the next
        // write fails with ENOSPC: then it is full to the page.
        for size in [chunk.len(), 4096] {
            loop {
                match file.write(&chunk[..size]) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(ENOSPC) => break,
                    Err(e) => return Err(e).context("writing the ballast"),
                }
            }
        }
        // tmpfs holds the pages already; nothing to sync.
        Ok(written)
    }

    /// Removes the ballast: the store has room again. The ballast is
    /// truncated before it is unlinked: an unlinked file's pages stay taken
    /// while any process holds it open, and a child forked by another
    /// thread of this process holds every open file until it execs.
    pub fn free(&self) -> anyhow::Result<()> {
        let path = self.ballast_dir.join(BALLAST);
        let emptied = std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|file| file.set_len(0));
        match emptied.and_then(|()| std::fs::remove_file(&path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("removing the ballast"),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.free();
        let _ = run(Command::new("umount").arg("-l").arg(&self.mount));
    }
}

/// `ENOSPC` on Linux.
const ENOSPC: i32 = 28;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether this machine lets us mount a store's own filesystem.
pub fn small_disks_available() -> bool {
    is_root()
        && Command::new("mount")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

    use super::*;

    #[test]
    fn freeing_makes_room_while_the_ballast_is_still_held_open() {
        if !small_disks_available() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = SmallDisk::mount(&dir.path().join("disk"), 1 << 20).unwrap();
        disk.fill().unwrap();
        // What a child forked meanwhile by another thread holds until it
        // execs: unlinked alone, the ballast would keep its pages.
        let held = std::fs::File::open(disk.ballast_dir.join(BALLAST)).unwrap();
        disk.free().unwrap();
        std::fs::write(disk.store_dir().join("more"), [0u8; 8192]).unwrap();
        drop(held);
    }
}
