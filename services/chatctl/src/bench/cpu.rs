//! Where the CPU goes: user + system time of every process of the stack
//! (and of this bench) over a measured window, from `/proc/<pid>/stat`.
//! Divided by the chunks delivered in that window it gives the cost of one
//! chunk per component, which stays put on a noisy machine where a rate
//! does not.

use std::collections::BTreeMap;

/// The processes counted, by executable name (`/proc/<pid>/comm`).
const COMPONENTS: [&str; 4] = ["nats-server", "gateway", "worker", "nginx"];

/// Ticks per second of `/proc/<pid>/stat` times (USER_HZ, fixed by the
/// kernel's ABI).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds used so far, per component (`bench` is this process).
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot(BTreeMap<String, f64>);

impl CpuSnapshot {
    /// Counts the stack this bench started (its descendants) when there is
    /// one: other stacks on the same machine (tests, another bench) run
    /// processes of the same names, and counting them too made the
    /// per-chunk split meaningless (or zero, when one of them exited
    /// mid-window). Attached to a stack it did not start (`--url`), it
    /// counts every process of those names.
    pub fn take() -> Self {
        let mut used = BTreeMap::new();
        let me = std::process::id();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Self(used);
        };
        let processes: Vec<(u32, Stat)> = dir
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                Some((pid, parse_stat(&stat)?))
            })
            .collect();
        let parents: BTreeMap<u32, u32> = processes.iter().map(|(pid, s)| (*pid, s.ppid)).collect();
        let descends_from_me = |mut pid: u32| {
            // Bounded: a parent chain is short, and a cycle cannot happen.
            for _ in 0..64 {
                match parents.get(&pid) {
                    Some(&parent) if parent == me => return true,
                    Some(&parent) if parent > 1 => pid = parent,
                    _ => return false,
                }
            }
            false
        };
        let component = |comm: &str| COMPONENTS.iter().find(|c| **c == comm).copied();
        let own_stack = processes
            .iter()
            .any(|(pid, s)| component(&s.comm).is_some() && descends_from_me(*pid));
        for (pid, stat) in &processes {
            let name = if *pid == me {
                "bench"
            } else if let Some(name) = component(&stat.comm) {
                if own_stack && !descends_from_me(*pid) {
                    continue;
                }
                name
            } else {
                continue;
            };
            *used.entry(name.to_string()).or_insert(0.0) += stat.secs;
        }
        Self(used)
    }

    /// CPU seconds used so far by the given processes, summed by the name
    /// given with each pid, and by this process as `bench`: for a system
    /// the bench started itself and knows by pid (the peer), where a name
    /// such as `node` could match someone else's process.
    pub fn of_pids(pids: &[(String, u32)]) -> Self {
        let mut used = BTreeMap::new();
        let me = (String::from("bench"), std::process::id());
        for (name, pid) in pids.iter().chain(std::iter::once(&me)) {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if let Some(stat) = parse_stat(&stat) {
                *used.entry(name.clone()).or_insert(0.0) += stat.secs;
            }
        }
        Self(used)
    }

    /// CPU seconds per component between `earlier` and this snapshot.
    /// Processes that started or ended in between count what they had.
    pub fn since(&self, earlier: &CpuSnapshot) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .map(|(name, secs)| {
                let before = earlier.0.get(name).copied().unwrap_or(0.0);
                (name.clone(), (secs - before).max(0.0))
            })
            .collect()
    }
}

/// What a `/proc/<pid>/stat` line says about a process.
#[derive(Debug, PartialEq)]
struct Stat {
    comm: String,
    ppid: u32,
    /// User + system CPU seconds.
    secs: f64,
}

/// The executable name, parent and user + system CPU seconds of a
/// `/proc/<pid>/stat` line. The name is in parentheses and may hold spaces,
/// so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // Field 4 (ppid), fields 14 (utime) and 15 (stime); the first after `)`
    // is field 3.
    let ppid: u32 = fields.get(1)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Stat {
        comm: comm.to_string(),
        ppid,
        secs: (utime + stime) / TICKS_PER_SEC,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let line = "42 (tokio rt) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                comm: "tokio rt".into(),
                ppid: 1,
                secs: 3.0
            })
        );
        assert_eq!(parse_stat("42 (x) S 1"), None);
    }

    #[test]
    fn this_process_is_counted_as_the_bench() {
        let before = CpuSnapshot::take();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let used = CpuSnapshot::take().since(&before);
        assert!(used.contains_key("bench"), "{used:?}");
    }
}
