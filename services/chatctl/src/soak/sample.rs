//! One sample of the soak: each process's resident memory, open file
//! descriptors and threads (from `/proc`), each stream's messages, bytes and
//! oldest message, and the sessions bucket's keys by family.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt;
use protocol::subjects;
use stack::Stack;
use tokio::time::Instant;

use super::Activity;

/// nats-server's name in the samples.
pub(super) const NATS_PROCESS: &str = "nats";

/// One process at one instant.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ProcessSample {
    pub pid: u32,
    pub rss_kib: u64,
    pub fds: u64,
    /// Of `fds`, the sockets: they follow the users connected, so they are
    /// judged apart from files, pipes and event descriptors.
    pub sockets: u64,
    pub threads: u64,
}

/// One stream at one instant.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StoreSample {
    pub messages: u64,
    pub bytes: u64,
    /// Age of its oldest message (0 when empty).
    pub oldest_secs: u64,
}

/// Everything sampled at one instant.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub elapsed_secs: f64,
    /// By process name (`nats`, `nginx`, `gw-0`, `w-0` …); a process that
    /// is down at that instant is missing.
    pub processes: BTreeMap<String, ProcessSample>,
    /// By stream name.
    pub streams: BTreeMap<String, StoreSample>,
    /// Keys of the sessions bucket by family (`session`, `cancel`,
    /// `claim`); missing when they could not be listed.
    pub keys: BTreeMap<String, u64>,
    /// What the users had done by then.
    pub activity: Activity,
}

impl Sample {
    pub fn one_line(&self) -> String {
        let rss: u64 = self.processes.values().map(|p| p.rss_kib).sum();
        let fds: u64 = self.processes.values().map(|p| p.fds).sum();
        let bytes: u64 = self.streams.values().map(|s| s.bytes).sum();
        let keys: Vec<String> = self.keys.iter().map(|(k, n)| format!("{k} {n}")).collect();
        format!(
            "{:>5.0} s: {} sessions, {} questions; RSS {} MiB, {fds} fds in all; store {} MiB; keys: {}",
            self.elapsed_secs,
            self.activity.sessions,
            self.activity.questions,
            rss / 1024,
            bytes >> 20,
            keys.join(", ")
        )
    }

    /// Total bytes of every stream.
    pub fn store_bytes(&self) -> u64 {
        self.streams.values().map(|s| s.bytes).sum()
    }
}

/// Every stream the system stores into.
pub(super) fn stream_names() -> [String; 5] {
    [
        subjects::EVENTS_STREAM.to_string(),
        subjects::REQUESTS_STREAM.to_string(),
        subjects::HISTORY_STREAM.to_string(),
        subjects::DEAD_STREAM.to_string(),
        subjects::kv_stream(),
    ]
}

/// The family of a key of the sessions bucket: its first dotted part for
/// cancel flags and claims, `session` for a session record.
pub(super) fn key_family(key: &str) -> &'static str {
    match key.split('.').next() {
        Some("cancel") => "cancel",
        Some("claim") => "claim",
        _ => "session",
    }
}

/// Takes one sample. What cannot be read (a process between a kill and its
/// restart, NATS restarting) is left out, never an error.
pub(super) async fn take(
    stack: &Stack,
    js: &jetstream::Context,
    started: Instant,
    activity: impl Fn() -> Activity,
) -> Sample {
    let mut processes = BTreeMap::new();
    let mut named: Vec<(String, Option<u32>, bool)> = vec![
        (NATS_PROCESS.into(), stack.nats_pid(), false),
        ("nginx".into(), stack.nginx_pid(), true),
    ];
    for i in 0..stack.gateway_count() {
        named.push((stack.gateway_node(i), stack.gateway_pid(i), false));
    }
    for i in 0..stack.worker_count() {
        named.push((stack.worker_node(i), stack.worker_pid(i), false));
    }
    for (name, pid, with_children) in named {
        if let Some(sample) = pid.and_then(|pid| read_process(pid, with_children)) {
            processes.insert(name, sample);
        }
    }
    let mut streams = BTreeMap::new();
    for name in stream_names() {
        let read = tokio::time::timeout(Duration::from_secs(5), js.get_stream(&name)).await;
        if let Ok(Ok(stream)) = read {
            let state = &stream.cached_info().state;
            let oldest_secs = if state.messages == 0 {
                0
            } else {
                let age = time::OffsetDateTime::now_utc() - state.first_timestamp;
                u64::try_from(age.whole_seconds()).unwrap_or(0)
            };
            streams.insert(
                name,
                StoreSample {
                    messages: state.messages,
                    bytes: state.bytes,
                    oldest_secs,
                },
            );
        }
    }
    let keys = tokio::time::timeout(Duration::from_secs(20), count_keys(js))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    Sample {
        elapsed_secs: started.elapsed().as_secs_f64(),
        processes,
        streams,
        keys,
        // Read after the keys: a key is never counted before the session,
        // cancel or question that wrote it.
        activity: activity(),
    }
}

/// The bucket's keys by family, from one paged stream-info request: each
/// subject of the bucket's stream that holds a message (a live key, or the
/// delete marker a removed cancel flag leaves until it expires). Listing
/// the keys (`kv.keys()`) would need flow-control replies the ops role may
/// not publish.
async fn count_keys(js: &jetstream::Context) -> anyhow::Result<BTreeMap<String, u64>> {
    let stream = js.get_stream(subjects::kv_stream()).await?;
    let mut subjects_held = stream.info_with_subjects(subjects::kv_keys_all()).await?;
    let mut counts: BTreeMap<String, u64> = ["session", "cancel", "claim"]
        .into_iter()
        .map(|f| (f.to_string(), 0))
        .collect();
    let prefix = format!("$KV.{}.", subjects::SESSIONS_BUCKET);
    // The pages are read one after another while keys come and go: a key
    // can move from one page to the next and be listed twice.
    let mut seen = std::collections::HashSet::new();
    while let Some((subject, _)) = subjects_held.try_next().await? {
        if !seen.insert(subject.clone()) {
            continue;
        }
        let key = subject.strip_prefix(&prefix).unwrap_or(&subject);
        *counts.entry(key_family(key).to_string()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// A process's RSS (KiB), open descriptors and threads from `/proc`; with
/// `with_children`, its children's added (Nginx's workers).
fn read_process(pid: u32, with_children: bool) -> Option<ProcessSample> {
    let mut sample = read_one(pid)?;
    sample.pid = pid;
    if with_children {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            if let Some(c) = read_one(child) {
                sample.rss_kib += c.rss_kib;
                sample.fds += c.fds;
                sample.sockets += c.sockets;
                sample.threads += c.threads;
            }
        }
    }
    Some(sample)
}

fn read_one(pid: u32) -> Option<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let (mut fds, mut sockets) = (0, 0);
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        fds += 1;
        // A descriptor closed between the listing and the link is skipped.
        if std::fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    Some(ProcessSample {
        pid,
        rss_kib: field("VmRSS:")?,
        fds,
        sockets,
        threads: field("Threads:")?,
    })
}

/// The samples as one CSV row per sample: `elapsed_s`, then per process
/// `<name>_pid, _rss_kib, _fds, _sockets, _threads`, per stream `<name>_messages,
/// _bytes, _oldest_s`, per key family `keys_<family>`, then the users'
/// running totals.
pub(super) fn write_csv(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let processes: std::collections::BTreeSet<&String> =
        samples.iter().flat_map(|s| s.processes.keys()).collect();
    let streams: std::collections::BTreeSet<&String> =
        samples.iter().flat_map(|s| s.streams.keys()).collect();
    let families: std::collections::BTreeSet<&String> =
        samples.iter().flat_map(|s| s.keys.keys()).collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut header = vec!["elapsed_s".to_string()];
    for p in &processes {
        for field in ["pid", "rss_kib", "fds", "sockets", "threads"] {
            header.push(format!("{p}_{field}"));
        }
    }
    for s in &streams {
        for field in ["messages", "bytes", "oldest_s"] {
            header.push(format!("{s}_{field}"));
        }
    }
    for f in &families {
        header.push(format!("keys_{f}"));
    }
    header.extend(
        [
            "sessions",
            "session_requests",
            "questions",
            "cancels",
            "regenerates",
            "drops",
            "events_checked",
        ]
        .map(String::from),
    );
    writeln!(out, "{}", header.join(","))?;
    for s in samples {
        let mut row = vec![format!("{:.1}", s.elapsed_secs)];
        for p in &processes {
            match s.processes.get(*p) {
                Some(p) => row.extend(
                    [u64::from(p.pid), p.rss_kib, p.fds, p.sockets, p.threads]
                        .map(|n| n.to_string()),
                ),
                None => row.extend(std::iter::repeat_n(String::new(), 5)),
            }
        }
        for name in &streams {
            match s.streams.get(*name) {
                Some(st) => {
                    row.extend([st.messages, st.bytes, st.oldest_secs].map(|n| n.to_string()))
                }
                None => row.extend(std::iter::repeat_n(String::new(), 3)),
            }
        }
        for f in &families {
            row.push(s.keys.get(*f).map(u64::to_string).unwrap_or_default());
        }
        let a = &s.activity;
        row.extend(
            [
                a.sessions,
                a.session_requests,
                a.questions,
                a.cancels,
                a.regenerates,
                a.drops,
                a.events_checked,
            ]
            .map(|n| n.to_string()),
        );
        writeln!(out, "{}", row.join(","))?;
    }
    out.flush()
}

/// The samples [`write_csv`] wrote. A file from before `session_requests`
/// was written takes the sessions created for it: never more than were
/// asked for, so a key census judged on it can only be stricter.
pub(super) fn read_csv(path: &Path) -> std::io::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut samples = Vec::new();
    for (number, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            return Err(bad(format!(
                "row {}: {} cells, the header has {}",
                number + 2,
                cells.len(),
                header.len()
            )));
        }
        let mut sample = Sample::default();
        let mut requests_seen = false;
        for (name, cell) in header.iter().zip(&cells) {
            if cell.is_empty() {
                continue;
            }
            if *name == "elapsed_s" {
                sample.elapsed_secs = cell
                    .parse()
                    .map_err(|e| bad(format!("row {}: elapsed_s: {e}", number + 2)))?;
                continue;
            }
            let value: u64 = cell
                .parse()
                .map_err(|e| bad(format!("row {}: {name}: {e}", number + 2)))?;
            let a = &mut sample.activity;
            match *name {
                "sessions" => a.sessions = value,
                "session_requests" => {
                    a.session_requests = value;
                    requests_seen = true;
                }
                "questions" => a.questions = value,
                "cancels" => a.cancels = value,
                "regenerates" => a.regenerates = value,
                "drops" => a.drops = value,
                "events_checked" => a.events_checked = value,
                _ => read_cell(&mut sample, name, value),
            }
        }
        if !requests_seen {
            sample.activity.session_requests = sample.activity.sessions;
        }
        samples.push(sample);
    }
    Ok(samples)
}

/// One `<process>_<field>`, `<stream>_<field>` or `keys_<family>` cell.
fn read_cell(sample: &mut Sample, name: &str, value: u64) {
    if let Some(family) = name.strip_prefix("keys_") {
        sample.keys.insert(family.to_string(), value);
        return;
    }
    let split = |field: &'static str| Some((name.strip_suffix(field)?.strip_suffix('_')?, field));
    let process = ["pid", "rss_kib", "fds", "sockets", "threads"];
    if let Some((owner, field)) = process.into_iter().find_map(split) {
        let p = sample.processes.entry(owner.to_string()).or_default();
        match field {
            "pid" => p.pid = u32::try_from(value).unwrap_or(u32::MAX),
            "rss_kib" => p.rss_kib = value,
            "fds" => p.fds = value,
            "sockets" => p.sockets = value,
            _ => p.threads = value,
        }
    } else if let Some((owner, field)) = ["messages", "bytes", "oldest_s"]
        .into_iter()
        .find_map(split)
    {
        let st = sample.streams.entry(owner.to_string()).or_default();
        match field {
            "messages" => st.messages = value,
            "bytes" => st.bytes = value,
            _ => st.oldest_secs = value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_read_back_as_written() {
        let mut s = Sample {
            elapsed_secs: 30.5,
            ..Default::default()
        };
        s.processes.insert(
            "gw-0".into(),
            ProcessSample {
                pid: 41,
                rss_kib: 18_000,
                fds: 20,
                sockets: 8,
                threads: 4,
            },
        );
        s.processes
            .insert(NATS_PROCESS.into(), ProcessSample::default());
        s.streams.insert(
            subjects::EVENTS_STREAM.into(),
            StoreSample {
                messages: 9,
                bytes: 1024,
                oldest_secs: 60,
            },
        );
        s.streams
            .insert("KV_chat_sessions".into(), StoreSample::default());
        s.keys.insert("cancel".into(), 3);
        s.activity.sessions = 5;
        s.activity.session_requests = 6;
        s.activity.questions = 7;
        s.activity.events_checked = 99;
        // The second sample lacks the gateway (it was down).
        let mut later = s.clone();
        later.elapsed_secs = 60.0;
        later.processes.remove("gw-0");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("soak.csv");
        write_csv(&path, &[s.clone(), later.clone()]).unwrap();
        let read = read_csv(&path).unwrap();
        assert_eq!(read.len(), 2);
        for (got, want) in read.iter().zip([&s, &later]) {
            assert_eq!(got.elapsed_secs, want.elapsed_secs);
            assert_eq!(got.processes, want.processes);
            assert_eq!(got.streams, want.streams);
            assert_eq!(got.keys, want.keys);
            assert_eq!(got.activity.session_requests, 6);
            assert_eq!(got.activity.events_checked, 99);
        }
    }

    #[test]
    fn keys_fall_into_their_families() {
        let (s, m) = (protocol::SessionId::new(), protocol::MessageId::new());
        assert_eq!(key_family(&subjects::session_key(s)), "session");
        assert_eq!(key_family(&subjects::cancel_flag_key(s, m)), "cancel");
        assert_eq!(key_family(&subjects::claim_key(s, m)), "claim");
    }

    #[test]
    fn this_process_can_be_read() {
        let me = read_process(std::process::id(), true).expect("/proc of this test");
        assert!(me.rss_kib > 0 && me.fds > 0 && me.threads > 0, "{me:?}");
    }
}
