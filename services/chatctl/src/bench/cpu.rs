//! Where the CPU goes: user + system time of every process of the stack
//! (and of this bench) over a measured window, from `/proc/<pid>/stat`.
//! Divided by the chunks delivered in that window it gives the cost of one
//! chunk per component, which stays put on a noisy machine where a rate
//! does not. Beside it, how long the components' threads waited for a core
//! (`/proc/<pid>/task/*/schedstat`): on a full machine that wait, not the
//! CPU, is most of a token's latency.

use std::collections::BTreeMap;

/// The processes counted, by executable name (`/proc/<pid>/comm`).
const COMPONENTS: [&str; 4] = ["nats-server", "gateway", "worker", "nginx"];

/// Ticks per second of `/proc/<pid>/stat` times (USER_HZ, fixed by the
/// kernel's ABI).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds used so far, per component (`bench` is this process), and
/// the components' waits for a core.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot {
    used: BTreeMap<String, f64>,
    waited: BTreeMap<String, RunQueue>,
}

/// Time a component's threads spent runnable but waiting for a core, and
/// how many times they were given one (the kernel's schedstat, summed over
/// the threads alive when read).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunQueue {
    pub waited_secs: f64,
    pub runs: u64,
}

impl RunQueue {
    /// Mean wait for a core each time a thread got one, µs.
    pub fn us_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.waited_secs * 1e6 / self.runs as f64)
    }

    pub fn add(&mut self, other: RunQueue) {
        self.waited_secs += other.waited_secs;
        self.runs += other.runs;
    }
}

impl CpuSnapshot {
    /// Counts the stack this bench started (its descendants) when there is
    /// one: other stacks on the same machine (tests, another bench) run
    /// processes of the same names, and counting them too made the
    /// per-chunk split meaningless (or zero, when one of them exited
    /// mid-window). Attached to a stack it did not start (`--url`), it
    /// counts every process of those names.
    pub fn take() -> Self {
        let mut snapshot = Self::default();
        let me = std::process::id();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return snapshot;
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
            snapshot.count(name, *pid, stat.secs);
        }
        snapshot
    }

    fn count(&mut self, name: &str, pid: u32, secs: f64) {
        *self.used.entry(name.to_string()).or_insert(0.0) += secs;
        self.waited
            .entry(name.to_string())
            .or_default()
            .add(run_queue_of(pid));
    }

    /// CPU seconds used so far by the given processes, summed by the name
    /// given with each pid, and by this process as `bench`: for a system
    /// the bench started itself and knows by pid (the peer), where a name
    /// such as `node` could match someone else's process.
    pub fn of_pids(pids: &[(String, u32)]) -> Self {
        let mut snapshot = Self::default();
        let me = (String::from("bench"), std::process::id());
        for (name, pid) in pids.iter().chain(std::iter::once(&me)) {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if let Some(stat) = parse_stat(&stat) {
                snapshot.count(name, *pid, stat.secs);
            }
        }
        snapshot
    }

    /// CPU seconds per component between `earlier` and this snapshot.
    /// Processes that started or ended in between count what they had.
    pub fn since(&self, earlier: &CpuSnapshot) -> BTreeMap<String, f64> {
        self.used
            .iter()
            .map(|(name, secs)| {
                let before = earlier.used.get(name).copied().unwrap_or(0.0);
                (name.clone(), (secs - before).max(0.0))
            })
            .collect()
    }

    /// The components' waits for a core between `earlier` and this
    /// snapshot (threads that ended in between take theirs with them).
    pub fn run_queue_since(&self, earlier: &CpuSnapshot) -> BTreeMap<String, RunQueue> {
        self.waited
            .iter()
            .map(|(name, now)| {
                let before = earlier.waited.get(name).copied().unwrap_or_default();
                let waited = RunQueue {
                    waited_secs: (now.waited_secs - before.waited_secs).max(0.0),
                    runs: now.runs.saturating_sub(before.runs),
                };
                (name.clone(), waited)
            })
            .collect()
    }
}

/// A process's threads' waits for a core so far, from each thread's
/// `schedstat` (ns on a core, ns waiting for one, times given one).
fn run_queue_of(pid: u32) -> RunQueue {
    let mut total = RunQueue::default();
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for thread in threads.filter_map(Result::ok) {
        let Ok(line) = std::fs::read_to_string(thread.path().join("schedstat")) else {
            continue;
        };
        if let Some(waited) = parse_schedstat(&line) {
            total.add(waited);
        }
    }
    total
}

fn parse_schedstat(line: &str) -> Option<RunQueue> {
    let mut fields = line.split_whitespace().skip(1);
    let waited_ns: u64 = fields.next()?.parse().ok()?;
    let runs: u64 = fields.next()?.parse().ok()?;
    Some(RunQueue {
        waited_secs: waited_ns as f64 / 1e9,
        runs,
    })
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
    fn schedstat_lines_parse() {
        assert_eq!(
            parse_schedstat("123456 2500000000 40\n"),
            Some(RunQueue {
                waited_secs: 2.5,
                runs: 40
            })
        );
        assert_eq!(parse_schedstat("123456 x 40"), None);
        assert_eq!(
            RunQueue {
                waited_secs: 0.001,
                runs: 4
            }
            .us_per_run(),
            Some(250.0)
        );
        assert_eq!(RunQueue::default().us_per_run(), None);
    }

    #[test]
    fn busy_threads_beside_each_other_wait_for_a_core() {
        // Two spinning threads per core: each must wait for a core. They
        // stay alive (parked on the barrier) until the second snapshot, since
        // a thread's schedstat leaves with it.
        let spinners = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        let before = CpuSnapshot::of_pids(&[]);
        let spun = std::sync::Barrier::new(spinners + 1);
        let read = std::sync::Barrier::new(spinners + 1);
        let waited = std::thread::scope(|scope| {
            for _ in 0..spinners {
                scope.spawn(|| {
                    let until = std::time::Instant::now() + std::time::Duration::from_millis(150);
                    while std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    spun.wait();
                    read.wait();
                });
            }
            spun.wait();
            let waited = CpuSnapshot::of_pids(&[]).run_queue_since(&before);
            read.wait();
            waited
        });
        let bench = waited.get("bench").copied().unwrap_or_default();
        // Each spinner had a core for at most half of its 150 ms.
        assert!(bench.runs >= spinners as u64, "{bench:?}");
        assert!(bench.waited_secs > 0.1, "{bench:?}");
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
