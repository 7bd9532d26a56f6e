//! Operating a cluster left running (`just cluster up`): after a node was
//! killed, `up` starts it again with its store and the others untouched;
//! `restart n2` replaces one node; a refusal is one line on stderr, never a
//! backtrace, even with `RUST_BACKTRACE=1`. The nodes are hosts of their
//! own (network namespaces) where the machine allows it, as `just cluster
//! up` makes them, on loopback otherwise; with names and ports of the
//! test's own, never an operator's.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn chatctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatctl"))
        .args(["cluster", "--dir"])
        .arg(dir)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

fn ok(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn pid(dir: &Path, node: &str) -> u32 {
    std::fs::read_to_string(dir.join(format!("{node}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// How many routes node `node` has: 2 once it has rejoined the others.
async fn routes(dir: &Path, node: &str) -> usize {
    let monitor = std::fs::read_to_string(dir.join(format!("{node}.monitor-url"))).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body)) = stack::http_get(&format!("{}/routez", monitor.trim())).await {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let n = v["num_routes"].as_u64().unwrap_or(0) as usize;
            // Each pair of nodes may hold more than one route (pooling):
            // every other node is reached once it is at least 2.
            if n >= 2 || tokio::time::Instant::now() >= deadline {
                return n;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops every node the test started, also when it fails.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = chatctl(self.0, &["down"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_comes_back_with_up_or_restart_and_refusals_are_one_line() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cluster");
    let _down = Down(&dir);
    println!("{}", ok(&chatctl(&dir, &["up", "--private"])));
    let before: Vec<u32> = ["n1", "n2", "n3"].iter().map(|n| pid(&dir, n)).collect();

    // n3 dies; `up` starts it again and leaves n1 and n2 alone.
    stack::send_signal(before[2], "KILL").unwrap();
    let out = ok(&chatctl(&dir, &["up", "--private"]));
    assert!(out.contains("n3 started"), "{out}");
    assert_eq!(pid(&dir, "n1"), before[0]);
    assert_eq!(pid(&dir, "n2"), before[1]);
    let n3 = pid(&dir, "n3");
    assert!(n3 != before[2] && alive(n3));
    assert!(routes(&dir, "n3").await >= 2, "n3 did not rejoin");
    // Its store is the one it had: the same folder, not a new one.
    assert!(dir.join("n3/jetstream").is_dir());

    // `restart n2` replaces n2 only.
    let out = ok(&chatctl(&dir, &["restart", "n2"]));
    assert!(out.contains("n2 started"), "{out}");
    assert!(!alive(before[1]));
    assert!(alive(pid(&dir, "n2")) && pid(&dir, "n1") == before[0]);
    assert!(routes(&dir, "n2").await >= 2, "n2 did not rejoin");

    // Refusals: one line, no backtrace.
    for args in [&["restart", "n7"][..], &["--bogus"][..]] {
        let refused = chatctl(&dir, args);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !stderr.contains("backtrace") && !stderr.contains("panicked"),
            "{stderr}"
        );
        if args[0] == "restart" {
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(stderr.contains("no node \"n7\""), "{stderr}");
        }
    }
    let elsewhere = root.path().join("never-up");
    let refused = chatctl(&elsewhere, &["restart", "n1"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("never started here"), "{stderr}");

    ok(&chatctl(&dir, &["down"]));
    for n in ["n1", "n2", "n3"] {
        assert!(!dir.join(format!("{n}.pid")).exists());
    }
    assert!(!alive(n3));
}
