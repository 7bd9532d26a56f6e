#!/usr/bin/env bash
# A 3-node NATS JetStream cluster on loopback (nats/cluster/n1..n3.conf:
# clients on 4222-4224, monitoring 8222-8224, routes 6222-6224), for R3
# streams. Stores, logs and pid files under run/cluster/.
#
#   scripts/cluster.sh up      then: NATS_URL=$(scripts/cluster.sh url) CHAT_REPLICAS=3 just up
#   scripts/cluster.sh down
#   scripts/cluster.sh url     prints the NATS_URL to use (one seed node: the
#                              client learns the others from the cluster and
#                              fails over to them)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/run/cluster"
timeout="${UP_TIMEOUT_SECS:-60}"
urls="nats://127.0.0.1:4222"

case "${1:-}" in
    url)
        echo "$urls"
        ;;
    down)
        exec "$root/scripts/down.sh" --cluster
        ;;
    up)
        nats_bin="$("$root/scripts/nats-server-path.sh")"
        mkdir -p "$dir/logs"
        for i in 1 2 3; do
            pid="$(cat "$dir/n$i.pid" 2>/dev/null || true)"
            if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
                echo "cluster: n$i already running (pid $pid)"
                continue
            fi
            mkdir -p "$dir/n$i"
            "$nats_bin" -c "$root/nats/cluster/n$i.conf" -sd "$dir/n$i" \
                >"$dir/logs/n$i.log" 2>&1 </dev/null &
            echo "$!" >"$dir/n$i.pid"
            echo "$((4221 + i))" >"$dir/n$i.port"
            echo "$((8221 + i))" >"$dir/n$i.monitor-port"
        done
        deadline=$((SECONDS + timeout))
        for i in 1 2 3; do
            # /healthz answers 200 once JetStream is up and this node is current with the meta leader.
            until curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$((8221 + i))/healthz"; do
                if ! kill -0 "$(cat "$dir/n$i.pid")" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
                    echo "cluster: n$i did not become healthy; last lines of its log:" >&2
                    tail -n 20 "$dir/logs/n$i.log" >&2
                    exit 1
                fi
                sleep 0.3
            done
        done
        echo "cluster: up (clients 4222-4224, monitoring 8222-8224)"
        echo "cluster: now run  NATS_URL=$urls CHAT_REPLICAS=3 just up"
        ;;
    *)
        echo "usage: $0 up|down|url" >&2
        exit 2
        ;;
esac
