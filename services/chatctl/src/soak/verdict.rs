//! The soak's pass or fail on what it sampled: after its warm-up (from the
//! run's start, or from its own restart) no process's memory or file
//! descriptors may grow faster than a bound (a least-squares slope over the
//! longest stretch one process lived), and
//! every stream and key family must stay within what its retention allows.
//!
//! Memory is judged with the fit's own uncertainty: a process whose RSS
//! swings (nats-server's Go heap rises and falls by ±25 MiB between
//! collections) fitted over a short stretch gives a slope of ±60 MiB/h from
//! the swings alone. It fails when its growth is above the bound beyond
//! two standard errors of the fitted slope; a process whose RSS moves in
//! the allocator's 1 MiB steps has a standard error near zero, so for it
//! the bound is the fitted slope itself.

use std::time::Duration;

use protocol::setup::LayoutConfig;
use protocol::subjects;

use super::sample::Sample;

/// What a soak is judged against.
#[derive(Clone, Debug)]
pub struct Bounds {
    pub warmup: Duration,
    pub min_fit: Duration,
    pub max_rss_mib_per_hour: f64,
    /// Descriptors other than sockets.
    pub max_fds_per_hour: f64,
    pub max_sockets_per_hour: f64,
    /// The layout the stack ran with: its retention settings.
    pub layout: LayoutConfig,
}

/// Expiry is not instant: the server checks ages periodically.
const EXPIRY_SLACK_SECS: u64 = 60;

/// One process's fitted growth.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Slope {
    pub process: String,
    /// Seconds of its life the fit covers (after the warm-up).
    pub fit_secs: u64,
    pub rss_mib_per_hour: f64,
    /// Two standard errors of `rss_mib_per_hour`: what its samples' swings
    /// alone could make of a flat line.
    pub rss_margin_mib_per_hour: f64,
    /// Descriptors other than sockets.
    pub fds_per_hour: f64,
    pub sockets_per_hour: f64,
    pub threads_per_hour: f64,
    /// Whether the fit covered enough time to be judged.
    pub judged: bool,
    pub passed: bool,
}

/// The pass or fail of the samples.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Verdict {
    pub slopes: Vec<Slope>,
    /// One line per retention bound: what bounds it, the worst seen, and
    /// whether that held.
    pub retention: Vec<(String, bool)>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.slopes.iter().all(|s| s.passed) && self.retention.iter().all(|(_, ok)| *ok)
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::from(
            "| process | fitted over | RSS MiB/h (± 2 s.e.) | other fds/h | sockets/h | threads/h | |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
        );
        for s in &self.slopes {
            out.push_str(&format!(
                "| {} | {} s | {:+.2} ± {:.2} | {:+.2} | {:+.2} | {:+.2} | {} |\n",
                s.process,
                s.fit_secs,
                s.rss_mib_per_hour,
                s.rss_margin_mib_per_hour,
                s.fds_per_hour,
                s.sockets_per_hour,
                s.threads_per_hour,
                match (s.judged, s.passed) {
                    (false, _) => "too short to judge",
                    (true, true) => "ok",
                    (true, false) => "GROWS",
                }
            ));
        }
        out.push_str("\nRetention:\n");
        for (line, ok) in &self.retention {
            out.push_str(&format!(
                "- {} {line}\n",
                if *ok { "ok" } else { "EXCEEDED" }
            ));
        }
        out
    }
}

/// Least-squares slope of `points` (x, y), 0 for fewer than two points, and
/// its standard error (0 for fewer than three, where the residuals say
/// nothing).
fn fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    if points.len() < 2 {
        return (0.0, 0.0);
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in points {
        num += (x - mean_x) * (y - mean_y);
        den += (x - mean_x) * (x - mean_x);
    }
    if den == 0.0 {
        return (0.0, 0.0);
    }
    let slope = num / den;
    if points.len() < 3 {
        return (slope, 0.0);
    }
    let residuals: f64 = points
        .iter()
        .map(|(x, y)| {
            let r = y - mean_y - slope * (x - mean_x);
            r * r
        })
        .sum();
    (slope, (residuals / (n - 2.0) / den).sqrt())
}

/// Judges `samples`: the last one, taken after the load stopped, counts
/// for retention only.
pub(super) fn judge(samples: &[Sample], bounds: &Bounds) -> Verdict {
    let under_load = &samples[..samples.len().saturating_sub(1)];
    let mut names: Vec<&String> = under_load.iter().flat_map(|s| s.processes.keys()).collect();
    names.sort();
    names.dedup();
    let run_start = under_load.first().map_or(0.0, |s| s.elapsed_secs);
    let mut slopes = Vec::new();
    for name in names {
        let warm = warmup_of(name, bounds).as_secs_f64();
        // When each pid was first seen: a restarted process warms up again
        // (it starts small and fills its caches), from its own start.
        let mut first_seen: std::collections::HashMap<u32, f64> = std::collections::HashMap::new();
        for s in under_load {
            if let Some(p) = s.processes.get(name) {
                first_seen.entry(p.pid).or_insert(s.elapsed_secs);
            }
        }
        // The stretches one pid lived after its warm-up; the longest is
        // fitted (fitting across a restart would mislead).
        let mut runs: Vec<Vec<&Sample>> = Vec::new();
        let mut last_pid = None;
        for s in under_load {
            let Some(p) = s.processes.get(name) else {
                last_pid = None;
                continue;
            };
            // A process there from the first sample started with the run.
            let born = first_seen
                .get(&p.pid)
                .copied()
                .filter(|&t| t > run_start)
                .unwrap_or(0.0);
            if s.elapsed_secs < born + warm {
                continue;
            }
            if last_pid != Some(p.pid) {
                runs.push(Vec::new());
                last_pid = Some(p.pid);
            }
            if let Some(run) = runs.last_mut() {
                run.push(s);
            }
        }
        let Some(run) = runs.into_iter().max_by_key(Vec::len) else {
            continue;
        };
        let span = match (run.first(), run.last()) {
            (Some(a), Some(b)) => b.elapsed_secs - a.elapsed_secs,
            _ => 0.0,
        };
        let fit_per_hour = |f: &dyn Fn(&Sample) -> f64| {
            let points: Vec<(f64, f64)> = run.iter().map(|s| (s.elapsed_secs, f(s))).collect();
            let (slope, error) = fit(&points);
            (slope * 3600.0, error * 3600.0)
        };
        let per_hour = |f: &dyn Fn(&Sample) -> f64| fit_per_hour(f).0;
        let get = |s: &Sample| s.processes.get(name).cloned().unwrap_or_default();
        let (rss, rss_error) = fit_per_hour(&|s| get(s).rss_kib as f64 / 1024.0);
        let rss_margin = 2.0 * rss_error;
        let fds = per_hour(&|s| get(s).fds.saturating_sub(get(s).sockets) as f64);
        let sockets = per_hour(&|s| get(s).sockets as f64);
        let threads = per_hour(&|s| get(s).threads as f64);
        let judged = span >= bounds.min_fit.as_secs_f64();
        slopes.push(Slope {
            process: name.clone(),
            fit_secs: span as u64,
            rss_mib_per_hour: rss,
            rss_margin_mib_per_hour: rss_margin,
            fds_per_hour: fds,
            sockets_per_hour: sockets,
            threads_per_hour: threads,
            judged,
            passed: !judged
                || (rss - rss_margin <= bounds.max_rss_mib_per_hour
                    && fds <= bounds.max_fds_per_hour
                    && sockets <= bounds.max_sockets_per_hour),
        });
    }
    Verdict {
        slopes,
        retention: retention(samples, &bounds.layout),
    }
}

/// The warm-up of one process. nats-server's memory holds what the streams
/// retain (cached blocks, the dedup map, the KV's keys): it grows, by
/// design, until the longest retention window has turned over once, so its
/// fit starts that much later. Every other process's starts after the
/// warm-up.
fn warmup_of(process: &str, bounds: &Bounds) -> Duration {
    if process != super::sample::NATS_PROCESS {
        return bounds.warmup;
    }
    let layout = &bounds.layout;
    let longest = layout
        .replay_window_secs
        .max(layout.history_max_age_secs)
        .max(layout.session_ttl_secs);
    bounds.warmup + Duration::from_secs(longest)
}

/// Each stream's oldest message within its `max_age`, its bytes within its
/// `max_bytes`, the work queue within its length, and each key family within
/// what the users could have written.
fn retention(samples: &[Sample], layout: &LayoutConfig) -> Vec<(String, bool)> {
    let mut lines = Vec::new();
    let mut age_bound = |stream: String, max_age: u64, max_bytes: i64, why: &str| {
        let oldest = samples
            .iter()
            .filter_map(|s| s.streams.get(&stream))
            .map(|s| s.oldest_secs)
            .max()
            .unwrap_or(0);
        let bytes = samples
            .iter()
            .filter_map(|s| s.streams.get(&stream))
            .map(|s| s.bytes)
            .max()
            .unwrap_or(0);
        let ok = oldest <= max_age + EXPIRY_SLACK_SECS
            && u64::try_from(max_bytes).map_or(true, |max| bytes <= max);
        lines.push((
            format!(
                "{stream}: oldest message at most {oldest} s old (max_age {max_age} s, {why}); \
                 at most {} MiB (max_bytes {} MiB)",
                bytes >> 20,
                max_bytes >> 20
            ),
            ok,
        ));
    };
    age_bound(
        subjects::EVENTS_STREAM.to_string(),
        layout.replay_window_secs,
        layout.events_max_bytes,
        "the replay window",
    );
    age_bound(
        subjects::HISTORY_STREAM.to_string(),
        layout.history_max_age_secs,
        layout.history_max_bytes,
        "finished turns",
    );
    age_bound(
        subjects::DEAD_STREAM.to_string(),
        layout.history_max_age_secs,
        layout.dead_max_bytes,
        "dead letters",
    );
    age_bound(
        subjects::kv_stream(),
        layout.session_ttl_secs,
        layout.sessions_max_bytes,
        "session records, cancel flags and claims all expire with the bucket's TTL",
    );
    let queued = samples
        .iter()
        .filter_map(|s| s.streams.get(subjects::REQUESTS_STREAM))
        .map(|s| s.messages)
        .max()
        .unwrap_or(0);
    lines.push((
        format!(
            "{}: at most {queued} jobs queued (max_messages {}; acked jobs leave the work queue)",
            subjects::REQUESTS_STREAM,
            layout.queue_max_msgs
        ),
        i64::try_from(queued).is_ok_and(|q| q <= layout.queue_max_msgs),
    ));
    // Key families: none holds more keys than the users wrote (and the
    // first sample, before any user, held).
    let mut family = |name: &str, bound: &dyn Fn(&Sample) -> u64, what: &str| {
        let baseline = samples
            .first()
            .and_then(|s| s.keys.get(name))
            .copied()
            .unwrap_or(0);
        let worst = samples
            .iter()
            .filter_map(|s| s.keys.get(name).map(|n| (*n, baseline + bound(s))))
            .max_by_key(|(n, b)| i128::from(*n) - i128::from(*b));
        let (n, b) = worst.unwrap_or((0, 0));
        let peak = samples
            .iter()
            .filter_map(|s| s.keys.get(name))
            .max()
            .copied()
            .unwrap_or(0);
        lines.push((
            format!("keys `{name}`: at most {peak} (never more than {what}; worst {n} vs {b})"),
            n <= b,
        ));
    };
    family(
        "session",
        &|s| s.activity.session_requests,
        "the sessions asked for so far, retries included",
    );
    family("cancel", &|s| s.activity.cancels, "the cancels sent so far");
    family(
        "claim",
        &|s| s.activity.questions,
        "the questions asked so far",
    );
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::sample::ProcessSample;

    fn at(secs: f64, pid: u32, rss_mib: u64) -> Sample {
        let mut s = Sample {
            elapsed_secs: secs,
            ..Default::default()
        };
        s.processes.insert(
            "gw-0".into(),
            ProcessSample {
                pid,
                rss_kib: rss_mib * 1024,
                fds: 20,
                sockets: 8,
                threads: 4,
            },
        );
        s
    }

    fn bounds() -> Bounds {
        Bounds {
            warmup: Duration::from_secs(300),
            min_fit: Duration::from_secs(600),
            max_rss_mib_per_hour: 2.0,
            max_fds_per_hour: 2.0,
            max_sockets_per_hour: 20.0,
            layout: LayoutConfig::default(),
        }
    }

    #[test]
    fn slope_of_a_line() {
        let points: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 1.0)).collect();
        let (slope, error) = fit(&points);
        assert!((slope - 3.0).abs() < 1e-9 && error < 1e-9);
        assert_eq!(fit(&[(1.0, 1.0)]), (0.0, 0.0));
        // Scattered about a flat line: no slope, a standard error.
        let (slope, error) = fit(&[(0.0, 1.0), (1.0, -1.0), (2.0, 1.0), (3.0, -1.0)]);
        assert!(slope.abs() < 0.5 && error > 0.1, "{slope} {error}");
    }

    #[test]
    fn a_growing_process_fails_and_a_flat_one_passes() {
        // 10 MiB per hour, sampled every 30 s for 40 min (+ the final sample).
        let growing: Vec<Sample> = (0..=80)
            .map(|i| at(i as f64 * 30.0, 7, 100 + i / 12))
            .collect();
        let v = judge(&growing, &bounds());
        assert!(!v.passed(), "{}", v.to_markdown());
        let flat: Vec<Sample> = (0..=80).map(|i| at(i as f64 * 30.0, 7, 100)).collect();
        assert!(judge(&flat, &bounds()).passed());
    }

    #[test]
    fn swings_pass_when_they_level_off_and_a_steady_climb_through_them_fails() {
        // nats-server's heap after a restart, as the hour showed it: 13
        // minutes of RSS swinging by ±25 MiB around 215 MiB. A plain fit
        // of them gave +63 MiB/h.
        let swings = [
            213, 211, 195, 218, 227, 214, 203, 228, 242, 198, 227, 209, 227, 234, 201, 215, 230,
            199, 224, 236, 205, 212, 240, 207, 226, 219,
        ];
        let plateau: Vec<Sample> = swings
            .iter()
            .enumerate()
            .map(|(i, &mib)| at(i as f64 * 30.0, 7, mib))
            .collect();
        let mut plateau = plateau;
        plateau.push(at(13.0 * 60.0, 7, 215));
        let mut bounds = bounds();
        bounds.warmup = Duration::ZERO;
        let v = judge(&plateau, &bounds);
        assert!(v.passed(), "{}", v.to_markdown());
        assert!(v.slopes[0].judged && v.slopes[0].rss_margin_mib_per_hour > 10.0);
        // The same swings on a climb of 200 MiB/h (a leak of a few KiB per
        // answer) fail: the climb is far beyond what the swings explain.
        let climbing: Vec<Sample> = swings
            .iter()
            .enumerate()
            .map(|(i, &mib)| at(i as f64 * 30.0, 7, mib + i as u64 * 100 / 60))
            .chain(std::iter::once(at(13.0 * 60.0, 7, 260)))
            .collect();
        let v = judge(&climbing, &bounds);
        assert!(!v.passed(), "{}", v.to_markdown());
    }

    #[test]
    fn a_restarted_process_warms_up_again_from_its_own_start() {
        // Restarted at 10 min: 80 MiB growing to 100 over its first five
        // minutes, then flat for 40 minutes.
        let samples: Vec<Sample> = (0..=110)
            .map(|i| {
                if i < 20 {
                    at(i as f64 * 30.0, 7, 100)
                } else {
                    at(i as f64 * 30.0, 8, 80 + (i - 20).min(10) * 2)
                }
            })
            .collect();
        let v = judge(&samples, &bounds());
        assert!(v.passed(), "{}", v.to_markdown());
        assert!(v.slopes.iter().all(|s| s.judged), "{}", v.to_markdown());
    }

    #[test]
    fn nats_server_is_judged_once_the_retention_has_turned_over() {
        let mut bounds = bounds();
        bounds.layout.replay_window_secs = 600;
        bounds.layout.history_max_age_secs = 900;
        bounds.layout.session_ttl_secs = 900;
        // 60 min: grows by 5 MiB a minute for 20 minutes, then flat.
        let filling = |process: &str| -> Vec<Sample> {
            (0..=120)
                .map(|i| {
                    let mut s = at(i as f64 * 30.0, 7, 100 + (i.min(40) * 5) / 2);
                    if let Some(p) = s.processes.remove("gw-0") {
                        s.processes.insert(process.into(), p);
                    }
                    s
                })
                .collect()
        };
        let nats = judge(&filling(crate::soak::sample::NATS_PROCESS), &bounds);
        assert!(nats.passed(), "{}", nats.to_markdown());
        let gateway = judge(&filling("gw-0"), &bounds);
        assert!(!gateway.passed(), "{}", gateway.to_markdown());
    }

    #[test]
    fn sockets_are_judged_apart_from_other_descriptors() {
        // 40 min sampled every 30 s; `sockets`/`files` give each sample's count.
        let run = |sockets: &dyn Fn(u64) -> u64, files: &dyn Fn(u64) -> u64| {
            let samples: Vec<Sample> = (0..=80)
                .map(|i| {
                    let mut s = at(i as f64 * 30.0, 7, 100);
                    if let Some(p) = s.processes.get_mut("gw-0") {
                        p.sockets = sockets(i);
                        p.fds = p.sockets + files(i);
                    }
                    s
                })
                .collect();
            judge(&samples, &bounds())
        };
        // Users come and go: ±10 sockets around 70, slightly more at the end.
        let noisy = run(&|i| 70 + (i * 7) % 11 + i / 40, &|_| 12);
        assert!(noisy.passed(), "{}", noisy.to_markdown());
        // One socket kept per three minutes: 20 per hour and more.
        let leaking_sockets = run(&|i| 70 + i / 5, &|_| 12);
        assert!(
            !leaking_sockets.passed(),
            "{}",
            leaking_sockets.to_markdown()
        );
        // Files and pipes have no such noise: 6 more per hour fails.
        let leaking_files = run(&|_| 70, &|i| 12 + i / 20);
        assert!(!leaking_files.passed(), "{}", leaking_files.to_markdown());
    }

    #[test]
    fn a_restart_is_not_growth_and_short_fits_are_not_judged() {
        // Killed at 20 min: it restarts small and grows back.
        let restarted: Vec<Sample> = (0..=80)
            .map(|i| {
                if i < 40 {
                    at(i as f64 * 30.0, 7, 100)
                } else {
                    at(i as f64 * 30.0, 8, 100)
                }
            })
            .collect();
        assert!(judge(&restarted, &bounds()).passed());
        let short: Vec<Sample> = (0..=8)
            .map(|i| at(i as f64 * 30.0, 7, 100 + i * 50))
            .collect();
        let v = judge(&short, &bounds());
        assert!(v.passed() && !v.slopes.iter().any(|s| s.judged));
    }
}
