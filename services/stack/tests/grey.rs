//! The grey faults' tools on their own: a store's small filesystem fills to
//! its last byte, frees, and leaves no mount behind; a lossy link on
//! loopback drops the share of packets it is given on its port only, and
//! leaves no nftables table behind. Both need root; skipped otherwise.

#![allow(clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use stack::disk::{small_disks_available, SmallDisk};
use stack::loss::LoopbackLoss;

#[test]
fn a_small_disk_fills_to_the_last_byte_frees_and_unmounts() {
    if !small_disks_available() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("disk");
    let disk = SmallDisk::mount(&mount, 4 << 20).unwrap();
    let data = disk.store_dir().join("data");
    std::fs::write(&data, b"stored before").unwrap();
    let ballast = disk.fill().unwrap();
    assert!(ballast > 3 << 20, "{ballast}");
    let full = std::fs::File::create(disk.store_dir().join("more"))
        .and_then(|mut f| f.write_all(&[0u8; 8192]));
    assert_eq!(full.unwrap_err().raw_os_error(), Some(28), "ENOSPC");
    disk.free().unwrap();
    std::fs::write(disk.store_dir().join("more"), [0u8; 8192]).unwrap();
    assert_eq!(std::fs::read(&data).unwrap(), b"stored before");
    drop(disk);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&mount.display().to_string()), "{mounts}");
}

#[test]
fn a_lossy_loopback_port_drops_its_share_and_is_removed() {
    if !small_disks_available() {
        eprintln!("skipped: needs root");
        return;
    }
    let lossy = TcpListener::bind("127.0.0.1:0").unwrap();
    let whole = TcpListener::bind("127.0.0.1:0").unwrap();
    let (lossy_addr, whole_addr) = (lossy.local_addr().unwrap(), whole.local_addr().unwrap());
    let connects = |addr| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok();
    let loss = LoopbackLoss::start(&[lossy_addr.port()], 100).unwrap();
    assert!(!connects(lossy_addr), "every packet to the port is dropped");
    assert!(connects(whole_addr), "other ports are not touched");
    drop(loss);
    assert!(connects(lossy_addr), "the rule is gone");
    let tables = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(
        !tables.contains(&format!("chat_loss_{}_", std::process::id())),
        "{tables}"
    );
}
