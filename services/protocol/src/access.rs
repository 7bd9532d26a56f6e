//! Who may do what on NATS (README, "NATS access"). Every connection
//! authenticates with an nkey of one [`Role`]; the server's configuration
//! gives each role's public key the [`permissions`] below and nothing else.
//! This module is the one place they are written: the server configuration
//! is rendered from it (`credentials` crate), and the role tests assert
//! against a real nats-server what each role is refused.
//!
//! Every role has an inbox prefix of its own ([`Role::inbox_prefix`]): a
//! request's reply (a direct get of a session's events, a KV read) comes to
//! that prefix, and no other role may subscribe there.

use std::path::PathBuf;

use async_nats::ConnectOptions;

use crate::subjects;

/// The identities of the system. Gateways and workers run the chat; ops
/// (`chatctl`, the operator with the `nats` CLI) owns the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Gateway,
    Worker,
    Ops,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Gateway, Role::Worker, Role::Ops];

    /// The role's name: the file name of its nkey seed (`gateway.nk`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Worker => "worker",
            Role::Ops => "ops",
        }
    }

    /// The prefix of the role's reply subjects (`_INBOX.gateway`).
    pub fn inbox_prefix(self) -> String {
        format!("{}.{}", subjects::INBOX_ROOT, self.name())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The subjects a role may publish to and subscribe to; everything else
/// is refused by the server (a permissions violation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The streams a role reads with direct gets and whose info it may ask
/// (to verify the layout at start).
const LAYOUT_STREAMS: [&str; 4] = [
    subjects::REQUESTS_STREAM,
    subjects::EVENTS_STREAM,
    subjects::HISTORY_STREAM,
    subjects::DEAD_STREAM,
];

/// What gateways and workers both need: JetStream's account info, the info
/// of every part of the layout (to verify it), and the session bucket
/// (read, write, compare-and-set, a miss read again through the leader;
/// never its stream's admin API).
fn chat_service_common() -> Vec<String> {
    let kv_stream = subjects::kv_stream();
    let mut publish = vec![
        subjects::JS_API_INFO.to_string(),
        subjects::kv_keys_all(),
        subjects::direct_get(&kv_stream),
        format!("{}.>", subjects::direct_get(&kv_stream)),
        subjects::stream_message_get(&kv_stream),
        subjects::stream_info(&kv_stream),
        subjects::consumer_info(subjects::REQUESTS_STREAM, subjects::WORKERS_CONSUMER),
    ];
    publish.extend(LAYOUT_STREAMS.iter().map(|s| subjects::stream_info(s)));
    publish
}

/// Direct gets on one stream: by sequence or batch, and last by subject.
fn direct_gets(stream: &str) -> [String; 2] {
    let api = subjects::direct_get(stream);
    let by_subject = format!("{api}.>");
    [api, by_subject]
}

/// The least each role needs (README, "NATS access", has the same as a table).
pub fn permissions(role: Role) -> Permissions {
    let inbox = format!("{}.>", role.inbox_prefix());
    match role {
        // Stores the user's message and gateway-side errors, queues the job,
        // announces cancels and revocations; reads events and turns (a
        // session's last event also through the events stream's leader,
        // for `GET /api/events`); follows the live copies of events.
        Role::Gateway => {
            let mut publish = chat_service_common();
            publish.extend([
                subjects::EVENTS_ALL.to_string(),
                subjects::REQUESTS_ALL.to_string(),
                subjects::CANCEL_ALL.to_string(),
                subjects::REVOKED_ALL.to_string(),
                subjects::USERS_ALL.to_string(),
            ]);
            publish.extend(direct_gets(subjects::EVENTS_STREAM));
            publish.push(subjects::stream_message_get(subjects::EVENTS_STREAM));
            publish.extend(direct_gets(subjects::HISTORY_STREAM));
            Permissions {
                publish,
                subscribe: vec![
                    subjects::LIVE_ALL.to_string(),
                    subjects::REVOKED_ALL.to_string(),
                    subjects::USERS_ALL.to_string(),
                    inbox,
                ],
            }
        }
        // Pulls and acks jobs of the workers consumer; stores events, turns
        // and dead letters; claims a job it took over; reads a session's turns (the conversation a
        // model gets) and events (the answer's fence); hears cancels and the
        // max-deliveries advisory.
        Role::Worker => {
            let mut publish = chat_service_common();
            publish.extend([
                subjects::EVENTS_ALL.to_string(),
                // A run that took a job over records its claim, which
                // fences the terminal event of the run it replaced.
                subjects::CLAIMS_ALL.to_string(),
                subjects::HISTORY_ALL.to_string(),
                subjects::DEAD_ALL.to_string(),
                // A claim: a worker that takes over a job tells the one
                // that lost it (and still runs it) to stop.
                subjects::CANCEL_ALL.to_string(),
                // "answer finished" in the owner's session list.
                subjects::USERS_ALL.to_string(),
                subjects::consumer_next(subjects::REQUESTS_STREAM, subjects::WORKERS_CONSUMER),
                subjects::acks(subjects::REQUESTS_STREAM, subjects::WORKERS_CONSUMER),
                // Dead-lettering: read the exhausted job by its sequence,
                // then delete it from the queue (one message, never the stream).
                subjects::stream_message_get(subjects::REQUESTS_STREAM),
                subjects::stream_message_delete(subjects::REQUESTS_STREAM),
            ]);
            publish.extend(direct_gets(subjects::EVENTS_STREAM));
            publish.extend(direct_gets(subjects::HISTORY_STREAM));
            Permissions {
                publish,
                subscribe: vec![
                    subjects::CANCEL_ALL.to_string(),
                    subjects::max_deliveries_advisory(),
                    inbox,
                ],
            }
        }
        // The layout and inspection: the whole JetStream API (create,
        // update, delete, read), the bench's scratch subjects. It stores no
        // chat event and reads no live copy: it cannot pose as a worker.
        Role::Ops => Permissions {
            publish: vec![
                subjects::JS_API_ALL.to_string(),
                subjects::BENCH_ALL.to_string(),
            ],
            subscribe: vec![
                format!("{}.>", subjects::INBOX_ROOT),
                subjects::BENCH_ALL.to_string(),
            ],
        },
    }
}

/// The permissions of every role as a markdown table (README, "NATS
/// access", holds it; a test keeps the two the same).
pub fn permissions_table() -> String {
    let mut out =
        String::from("| role | may publish to | may subscribe to |\n| --- | --- | --- |\n");
    for role in Role::ALL {
        let p = permissions(role);
        let list = |subjects: &[String]| {
            subjects
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| {role} | {} | {} |\n",
            list(&p.publish),
            list(&p.subscribe)
        ));
    }
    out
}

/// How a service reaches NATS beyond its URL: its nkey and the CA that
/// signed the server's certificate. Both from files, so no secret is on a
/// command line or in the environment; both optional, for a NATS without
/// authentication or TLS (a developer's own server).
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct NatsAccess {
    /// The nkey seed file this process authenticates with (`run/nats/gateway.nk`
    /// after `just up`). Unset: no authentication.
    #[arg(long, env = "NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// The CA certificate (PEM) the NATS server's certificate must chain to.
    /// Set: the connection requires TLS and verifies the server.
    #[arg(long, env = "NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
}

/// Why a connection could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("reading the nkey seed {path}: {source}")]
    Seed {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no nkey seed (one line starting with SU)")]
    NotASeed { path: PathBuf },
}

impl NatsAccess {
    /// This access as command-line flags of a gateway, worker or chatctl.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(path) = &self.nats_nkey_file {
            args.extend(["--nats-nkey-file".to_string(), path.display().to_string()]);
        }
        if let Some(path) = &self.nats_ca_file {
            args.extend(["--nats-ca-file".to_string(), path.display().to_string()]);
        }
        args
    }

    /// Adds this access to `options` for a process of `role`: its inbox
    /// prefix, its nkey, the CA to verify the server with.
    pub fn apply(
        &self,
        role: Role,
        options: ConnectOptions,
    ) -> Result<ConnectOptions, AccessError> {
        let mut options = options.custom_inbox_prefix(role.inbox_prefix());
        if let Some(path) = &self.nats_nkey_file {
            let text = std::fs::read_to_string(path).map_err(|source| AccessError::Seed {
                path: path.clone(),
                source,
            })?;
            let seed = text
                .lines()
                .map(str::trim)
                .find(|line| line.starts_with("SU"))
                .ok_or_else(|| AccessError::NotASeed { path: path.clone() })?;
            options = options.nkey(seed.to_string());
        }
        if let Some(ca) = &self.nats_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_chat_service_may_touch_the_layout_admin_api() {
        let admin = [
            "$JS.API.STREAM.CREATE.",
            "$JS.API.STREAM.UPDATE.",
            "$JS.API.STREAM.DELETE.",
            "$JS.API.STREAM.PURGE.",
            "$JS.API.CONSUMER.CREATE.",
            "$JS.API.CONSUMER.DURABLE.CREATE.",
            "$JS.API.CONSUMER.DELETE.",
        ];
        for role in [Role::Gateway, Role::Worker] {
            let p = permissions(role);
            for subject in &p.publish {
                assert!(
                    !admin.iter().any(|a| subject.starts_with(a)),
                    "{role} may publish {subject}"
                );
                // A wildcard in the JetStream API only for direct gets.
                if subject.starts_with("$JS.API.") && subject.contains(['*', '>']) {
                    assert!(
                        subject.starts_with("$JS.API.DIRECT.GET."),
                        "{role}: {subject}"
                    );
                }
            }
            // No wildcard subscription beyond the role's own inbox.
            let inbox = format!("{}.>", role.inbox_prefix());
            assert!(p.subscribe.iter().all(|s| !s.contains('>') || *s == inbox));
        }
    }

    #[test]
    fn each_role_replies_only_to_its_own_inbox() {
        let prefixes: Vec<String> = Role::ALL.iter().map(|r| r.inbox_prefix()).collect();
        assert_eq!(prefixes, ["_INBOX.gateway", "_INBOX.worker", "_INBOX.ops"]);
        assert!(permissions(Role::Gateway)
            .subscribe
            .contains(&"_INBOX.gateway.>".to_string()));
        assert!(!permissions(Role::Worker)
            .subscribe
            .iter()
            .any(|s| s.starts_with("_INBOX.gateway")));
    }

    #[test]
    fn a_seed_file_is_read_and_a_wrong_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.nk");
        std::fs::write(&bad, "not a seed\n").unwrap();
        let access = NatsAccess {
            nats_nkey_file: Some(bad.clone()),
            nats_ca_file: None,
        };
        let err = access
            .apply(Role::Worker, ConnectOptions::new())
            .unwrap_err();
        assert!(err.to_string().contains("bad.nk"), "{err}");
        let missing = NatsAccess {
            nats_nkey_file: Some(dir.path().join("missing.nk")),
            nats_ca_file: None,
        };
        assert!(missing.apply(Role::Worker, ConnectOptions::new()).is_err());
    }
}
