//! What each node's monitoring endpoint says of its replicas, and whether
//! they all hold the same messages.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::http::http_get;

/// A stream as one node's monitoring endpoint reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    pub messages: u64,
    pub last_seq: u64,
    /// The server name of the leader, as this node knows it.
    pub leader: Option<String>,
}

/// Whether every node answered and all report the same streams with the
/// same message count and last sequence.
pub(super) fn converged(
    views: &[(String, anyhow::Result<BTreeMap<String, ReplicaState>>)],
) -> bool {
    let mut first: Option<BTreeMap<&String, (u64, u64)>> = None;
    for (_, view) in views {
        let Ok(streams) = view else {
            return false;
        };
        let counts: BTreeMap<&String, (u64, u64)> = streams
            .iter()
            .map(|(name, s)| (name, (s.messages, s.last_seq)))
            .collect();
        match &first {
            None => first = Some(counts),
            Some(f) if *f != counts => return false,
            Some(_) => {}
        }
    }
    true
}

/// One node's streams from `/jsz?accounts=true&streams=true`.
pub(super) async fn node_streams(
    monitor_url: &str,
) -> anyhow::Result<BTreeMap<String, ReplicaState>> {
    let url = format!("{monitor_url}/jsz?accounts=true&streams=true");
    let (status, body) = http_get(&url).await?;
    if status != 200 {
        bail!("GET {url}: {status}");
    }
    parse_jsz_streams(&body).with_context(|| format!("reading {url}"))
}

/// The streams of a `/jsz?accounts=true&streams=true` answer.
pub fn parse_jsz_streams(body: &str) -> anyhow::Result<BTreeMap<String, ReplicaState>> {
    let json: Value = serde_json::from_str(body)?;
    let mut out = BTreeMap::new();
    let accounts = json["account_details"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for account in accounts {
        let streams = account["stream_detail"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for stream in streams {
            let Some(name) = stream["name"].as_str() else {
                continue;
            };
            out.insert(
                name.to_string(),
                ReplicaState {
                    messages: stream["state"]["messages"].as_u64().unwrap_or(0),
                    last_seq: stream["state"]["last_seq"].as_u64().unwrap_or(0),
                    leader: stream["cluster"]["leader"].as_str().map(str::to_string),
                },
            );
        }
    }
    Ok(out)
}
