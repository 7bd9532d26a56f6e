//! The bench's pieces at tiny scale: they produce numbers and detect no
//! loss on a healthy system. Performance figures come from `just bench`,
//! never from tests.

use std::time::Duration;

use chatctl::bench::load::{self, LoadSpec};
use chatctl::bench::peer::{self, load as peer_load, PeerLoadSpec, PeerOptions, PeerService};
use chatctl::bench::raw_nats;
use chatctl::bench::socket::Endpoint;
use chatctl::bench::sse;
use stack::nats::NatsServer;
use stack::{Stack, StackOptions};

#[tokio::test]
async fn raw_nats_rates_are_measured() {
    let nats = NatsServer::start().unwrap();
    let ops = nats.access(protocol::access::Role::Ops);
    let url = nats.url();
    let target = raw_nats::NatsTarget {
        url: &url,
        access: &ops,
    };
    let core = raw_nats::core_pub_sub(&target, 10_000, 200).await.unwrap();
    assert!(core.received > 0 && core.per_sec > 0.0, "{core:?}");
    let js = raw_nats::jetstream_pipelined(&target, 2_000, 200, 256)
        .await
        .unwrap();
    assert!(js > 0.0);
    let spread = raw_nats::Spread {
        subjects: 50,
        republish: true,
    };
    let republished = raw_nats::pipelined(&target, 2_000, 200, 256, spread)
        .await
        .unwrap();
    assert!(republished.per_sec > 0.0, "{republished:?}");
    // Copies still in flight when the last ack came are not counted.
    assert!(republished.received > 0, "{republished:?}");
    // The scratch stream is gone afterwards.
    let js_ctx = async_nats::jetstream::new(nats.connect().await.unwrap());
    assert!(js_ctx
        .get_stream(protocol::subjects::BENCH_STREAM)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_jetstream_publishing_is_measured_with_and_without_republish_acks_and_gathering() {
    let nats = NatsServer::start().unwrap();
    let ops = nats.access(protocol::access::Role::Ops);
    let url = nats.url();
    let target = raw_nats::NatsTarget {
        url: &url,
        access: &ops,
    };
    let variants = [
        (false, true, Duration::ZERO),
        (true, true, Duration::ZERO),
        // Unacked: counted as sent, and failed unless the stream holds them all.
        (true, false, Duration::ZERO),
        (true, true, Duration::from_millis(2)),
    ];
    for (republish, acked, gather) in variants {
        let load = raw_nats::PacedPublishing {
            republish,
            acked,
            gather,
            ..raw_nats::PacedPublishing::unbatched(20, 400.0, 2, 200)
        };
        let raw = raw_nats::jetstream_paced(&target, load, Duration::from_secs(2))
            .await
            .unwrap();
        // 400 a second for 2 s, give or take the timers on a loaded machine.
        assert!((500..=1_000).contains(&raw.acked), "{raw:?}");
        // nats-server's CPU comes from /proc in 10 ms ticks: a quiet
        // server may spend less than one in the window.
        assert!(
            raw.nats_server_us_per_message.is_finite() && raw.nats_server_us_per_message >= 0.0,
            "{raw:?}"
        );
        if republish {
            assert!(
                raw.received * 10 >= raw.acked * 9,
                "republished copies: {raw:?}"
            );
        } else {
            assert_eq!(raw.received, 0, "{raw:?}");
        }
    }
    let js_ctx = async_nats::jetstream::new(nats.connect().await.unwrap());
    assert!(js_ctx
        .get_stream(protocol::subjects::BENCH_STREAM)
        .await
        .is_err());
}

/// Tokens of a demo answer in the tiny runs.
const TOKENS: usize = 20;

/// A stack whose demo model answers at once, a chunk per token, each token
/// stamped.
async fn zero_delay_stack(gateways: usize, nginx: bool) -> anyhow::Result<Stack> {
    Stack::start(StackOptions {
        gateways,
        workers: 1,
        nginx,
        env: vec![
            ("DEMO_TOKENS_PER_SEC".into(), "0".into()),
            ("DEMO_ANSWER_TOKENS".into(), TOKENS.to_string()),
            ("CHUNK_WINDOW_MS".into(), "0".into()),
            ("DEMO_STAMP_TOKENS".into(), "true".into()),
            ("GATEWAY_FRAMES_PER_SEC".into(), "10000".into()),
            ("GATEWAY_FRAME_BURST".into(), "10000".into()),
        ],
        ..Default::default()
    })
    .await
}

/// Three sessions for a second, their first questions 100 ms apart (as the
/// paced runs spread theirs), every measured token traced.
fn tiny_spec(worker_metrics: Vec<String>) -> LoadSpec {
    LoadSpec {
        sessions: 3,
        warmup: Duration::from_millis(200),
        measure: Duration::from_secs(1),
        stagger: load::Stagger {
            span: Duration::from_millis(300),
        },
        connect_concurrency: 3,
        answer_tokens: TOKENS,
        max_turns: None,
        stamped_tokens: true,
        extra_client_cpu_per_token: Duration::ZERO,
        trace_tokens: true,
        worker_metrics,
    }
}

#[tokio::test]
async fn sessions_chat_end_to_end_without_loss() {
    let stack = zero_delay_stack(1, false).await.unwrap();
    let endpoint = Endpoint::parse(&stack.nginx_url()).unwrap();
    let outcome = load::run(
        &endpoint,
        &tiny_spec(vec![format!("{}/metrics", stack.worker_metrics_url(0))]),
    )
    .await
    .unwrap();
    assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
    assert!(outcome.chunks_per_sec > 0.0);
    // The window's waits beside its CPU: the worker's acks, read from its
    // metrics, and every component's turns on a core.
    let acks = outcome
        .cost
        .publish_acks
        .expect("the worker's acks were read");
    assert!(
        acks.count > 0.0 && acks.mean_ms().is_some_and(|ms| ms > 0.0),
        "{acks:?}"
    );
    for component in ["gateway", "worker", "nats-server", "bench"] {
        let waited = outcome
            .cost
            .run_queue
            .get(component)
            .copied()
            .unwrap_or_default();
        assert!(waited.runs > 0, "{component}: {:?}", outcome.cost.run_queue);
    }
    // The machine's TCP opens were read (other tests may open some meanwhile:
    // only that the counter was read is certain here).
    assert!(outcome.cost.connections_opened.is_some());
    assert!(!outcome.ttft.is_empty() && !outcome.chunk_latency.is_empty());
    // Every stamped token was measured once: zero window, a chunk per token.
    assert_eq!(outcome.token_latency.len(), outcome.chunk_latency.len());
    // Traced as asked: every measured token once.
    assert_eq!(outcome.token_trace.len(), outcome.token_latency.len());
    // Each answer's first chunk is counted again on its own, and only it.
    assert!(!outcome.first_chunk_token_latency.is_empty());
    assert!(outcome.first_chunk_token_latency.len() < outcome.token_latency.len());
    assert!(outcome.tokens_per_sec > 0.0 && outcome.bytes_per_sec > 0.0);
    assert_eq!(outcome.sessions.len(), 3);
    assert!(outcome.sessions.iter().all(|s| s.complete && s.turns > 0));
    let problems = load::verify_against_stream(&endpoint, &outcome.sessions, 3).await;
    assert!(problems.is_empty(), "{problems:?}");
}

/// The `sse` scenario's client at tiny scale, through Nginx: every answer
/// arrives whole and once (its ledger against the stream is empty), and
/// each session keeps one connection from answer to answer (a response
/// read to its end leaves its connection reusable).
#[tokio::test]
async fn sse_answers_arrive_whole_and_once_over_kept_connections() {
    let stack = zero_delay_stack(2, true).await.unwrap();
    let endpoint = Endpoint::parse(&stack.nginx_url()).unwrap();
    let spec = tiny_spec(Vec::new());
    let outcome = sse::run(&endpoint, &spec).await.unwrap();
    assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
    assert!(
        outcome.answers.len() > spec.sessions,
        "{}",
        outcome.answers.len()
    );
    assert_eq!(outcome.connections_opened, spec.sessions as u64);
    assert!(outcome.measured_tokens > 0 && !outcome.token_latency.is_empty());
    assert_eq!(outcome.token_trace.len(), outcome.token_latency.len());
    assert!(!outcome.first_chunk_token_latency.is_empty());
    let problems = sse::verify(&endpoint, &outcome.answers, outcome.answers.len()).await;
    assert!(problems.is_empty(), "{problems:?}");
}

/// The peer phase at tiny scale: resumable-stream on Redis delivers every
/// token exactly once, to the clients that dropped their connection half
/// way and resumed too, paced and unpaced. Needs `redis-server` and
/// `npm` (`scripts/install-deps.sh --bench`): without them it fails.
#[tokio::test]
async fn the_peer_delivers_every_token_exactly_once_across_resumes() {
    let peer = PeerService::start(&PeerOptions {
        processes: 2,
        appendonly: false,
    })
    .await
    .unwrap();
    for tokens_per_sec in [0.0, 200.0] {
        let outcome = peer_load::run(
            &peer.url(),
            &peer.pids(),
            &PeerLoadSpec {
                sessions: 4,
                warmup: Duration::from_millis(200),
                measure: Duration::from_secs(1),
                stagger: load::Stagger {
                    span: Duration::from_millis(200),
                },
                answer_tokens: 20,
                tokens_per_sec,
                first_token_ms: 20,
                resume_every: 2,
                max_turns: None,
            },
        )
        .await
        .unwrap();
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        assert!(outcome.answers >= 4, "{outcome:?}");
        assert!(outcome.resumed_answers >= 2, "{outcome:?}");
        assert!(outcome.tokens_per_sec > 0.0 && !outcome.token_latency.is_empty());
        assert!(outcome.cpu.contains_key("node") && outcome.cpu.contains_key("redis-server"));
    }
    let idle = peer::hold_idle(&peer, 20, 8).await.unwrap();
    assert_eq!(idle.streams, 20);
}
