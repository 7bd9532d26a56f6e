#!/usr/bin/env bash
# A 3-node NATS JetStream cluster for R3 streams, left running: the same Rust
# code the recovery tester and the tests use (`chatctl cluster`,
# services/stack/src/cluster.rs). Each node is a host of its own (a network
# namespace chatc-n1..n3 on bridge chatcb, 10.77.0.11-13, standard ports)
# when the machine allows it (root and `ip netns`), else on loopback (clients
# 4222-4224, monitoring 8222-8224, routes 6222-6224), saying so. State, stores
# and logs under run/cluster/ (n1.pid, n1.client-url, n1.monitor-url, urls).
#
#   scripts/cluster.sh up [--loopback]   then: NATS_URL=$(scripts/cluster.sh url) CHAT_REPLICAS=3 just up
#                                        (with some nodes running: starts the missing ones with their stores)
#   scripts/cluster.sh restart n3        stops node n3 (SIGTERM) and starts it again with its store
#   scripts/cluster.sh down              stops the nodes, removes the namespaces and the bridge
#   scripts/cluster.sh url               the seed list for NATS_URL (every node)
#
# NATS_SYNC_INTERVAL (e.g. `always`, `10s`) sets JetStream's sync_interval.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/run/cluster"
chatctl="$root/target/release/chatctl"

case "${1:-}" in
    url)
        if [ -s "$dir/urls" ]; then cat "$dir/urls"; else
            echo "cluster: not up (no $dir/urls)" >&2
            exit 1
        fi
        ;;
    up)
        shift
        (cd "$root" && cargo build --release -p chatctl)
        NATS_SERVER_BIN="${NATS_SERVER_BIN:-$("$root/scripts/nats-server-path.sh")}" \
            "$chatctl" cluster --dir "$dir" up "$@"
        ;;
    restart)
        shift
        (cd "$root" && cargo build --release -p chatctl)
        NATS_SERVER_BIN="${NATS_SERVER_BIN:-$("$root/scripts/nats-server-path.sh")}" \
            "$chatctl" cluster --dir "$dir" restart "$@"
        ;;
    down)
        exec "$root/scripts/down.sh" --cluster
        ;;
    *)
        echo "usage: $0 up [--loopback]|restart nN|down|url" >&2
        exit 2
        ;;
esac
