#!/usr/bin/env bash
# What is running and how the queues look: each process of run/*.pid (alive
# or not, pid, port), each gateway's /health (the local model's /v1/models),
# and from the NATS monitoring port (/jsz) every stream's messages, bytes and
# sequences, the workers consumer's pending / ack-pending / redelivered
# counts and the sessions bucket's key count.
#
# On the 3-node cluster it also shows each node, the leader of every stream
# and of the KV bucket, and each replica's lag (scripts/cluster-status.py).
#
#   scripts/status.sh     (NATS_MONITOR_URL overrides the monitoring address)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run="${RUN_DIR:-$root/run}"

shopt -s nullglob
files=("$run"/*.pid "$run"/cluster/*.pid)
shopt -u nullglob
if [ "${#files[@]}" -eq 0 ]; then
    echo "nothing is running (no pid files in run/); start it with: just up"
    exit 0
fi

printf '%-12s %-8s %-8s %-6s %s\n' PROCESS PID STATE PORT HEALTH
for f in "${files[@]}"; do
    name="$(basename "$f" .pid)"
    pid="$(cat "$f" 2>/dev/null || true)"
    port="$(cat "${f%.pid}.port" 2>/dev/null || echo -)"
    state=dead
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then state=alive; fi
    health=""
    case "$name" in
        gateway-* | nginx | worker-*)
            if [ "$state" = alive ] && [ "$port" != - ]; then
                health="$(curl -sS --max-time 2 -w ' [%{http_code}]' "http://127.0.0.1:$port/health" 2>&1 || true)"
            fi
            ;;
        local-model)
            if [ "$state" = alive ] && [ "$port" != - ]; then
                health="$(curl -sS --max-time 2 -o /dev/null -w 'GET /v1/models [%{http_code}]' \
                    "http://127.0.0.1:$port/v1/models" 2>&1 || true)"
            fi
            ;;
    esac
    printf '%-12s %-8s %-8s %-6s %s\n' "$name" "${pid:--}" "$state" "$port" "$health"
done

# Key metrics of every live gateway and worker (their /metrics, summed
# over labels): what an operator looks at first.
echo
printf '%-12s %s\n' PROCESS "KEY METRICS"
for f in "${files[@]}"; do
    name="$(basename "$f" .pid)"
    case "$name" in gateway-* | worker-*) ;; *) continue ;; esac
    pid="$(cat "$f" 2>/dev/null || true)"
    port="$(cat "${f%.pid}.port" 2>/dev/null || true)"
    { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ -n "$port" ]; } || continue
    text="$(curl -fsS --max-time 2 "http://127.0.0.1:$port/metrics" 2>/dev/null || true)"
    line="$(METRICS="$text" python3 - <<'PY'
import os
wanted = {
    "chat_gateway_connections_open": "ws_open",
    "chat_gateway_sessions_attached": "sessions",
    "chat_gateway_chunks_forwarded_total": "chunks_out",
    "chat_gateway_errors_total": "errors",
    "chat_gateway_replays_total": "replays",
    "chat_gateway_gap_repairs_total": "gap_repairs",
    "chat_gateway_nats_connected": "nats_up",
    "chat_worker_jobs_in_flight": "in_flight",
    "chat_worker_jobs_total": "jobs",
    "chat_worker_chunks_published_total": "chunks_in",
    "chat_queue_pending_jobs": "queue",
    "chat_queue_ack_pending_jobs": "ack_pending",
}
sums = {}
for line in os.environ.get("METRICS", "").splitlines():
    if not line or line.startswith("#"):
        continue
    key, _, value = line.rpartition(" ")
    name = key.split("{", 1)[0]
    if name in wanted:
        try:
            sums[name] = sums.get(name, 0.0) + float(value)
        except ValueError:
            pass
print("  ".join(f"{wanted[n]}={sums[n]:g}" for n in wanted if n in sums) or "(no metrics)")
PY
)"
    printf '%-12s %s\n' "$name" "$line"
done

# The 3-node cluster (`just cluster up`): each node's own /varz and /jsz,
# which node leads each stream and the KV bucket, and how far each replica
# lags. The nodes' monitoring URLs come from run/cluster/n*.monitor-url
# (or n*.monitor-port on loopback); CLUSTER_MONITOR_URLS (space-separated)
# overrides them.
cluster_urls=()
if [ -n "${CLUSTER_MONITOR_URLS:-}" ]; then
    read -r -a cluster_urls <<<"$CLUSTER_MONITOR_URLS"
else
    for i in 1 2 3 4 5 6 7 8 9; do
        if [ -f "$run/cluster/n$i.monitor-url" ]; then
            cluster_urls+=("$(cat "$run/cluster/n$i.monitor-url")")
        elif [ -f "$run/cluster/n$i.monitor-port" ]; then
            cluster_urls+=("http://127.0.0.1:$(cat "$run/cluster/n$i.monitor-port")")
        fi
    done
fi
if [ "${#cluster_urls[@]}" -gt 0 ]; then
    echo
    echo "NATS cluster (each node's /varz and /jsz?acc=\$G&streams=true&config=true):"
    "$root/scripts/cluster-status.py" "${cluster_urls[@]}" || true
    [ -n "${NATS_MONITOR_URL:-}" ] || [ -f "$run/nats.monitor-port" ] || exit 0
fi

monitor="${NATS_MONITOR_URL:-}"
if [ -z "$monitor" ]; then
    if [ -f "$run/nats.monitor-port" ]; then
        monitor="http://127.0.0.1:$(cat "$run/nats.monitor-port")"
    elif [ -f "$run/cluster/n1.monitor-port" ]; then
        monitor="http://127.0.0.1:$(cat "$run/cluster/n1.monitor-port")"
    else
        monitor="http://127.0.0.1:8222"
    fi
fi
echo
# /healthz is 503 once a stream hit a write error (its disk was full): such
# a stream takes no writes until nats-server restarts, even after space is
# freed (README, "Grey failures").
health="$(curl -sS --max-time 3 "$monitor/healthz" 2>&1 || true)"
echo "nats-server $monitor/healthz: $health"
echo "JetStream ($monitor/jsz?streams=true&consumers=true):"
if ! jsz="$(curl -fsS --max-time 3 "$monitor/jsz?streams=true&consumers=true" 2>&1)"; then
    echo "  not reachable: $jsz"
    exit 0
fi
JSZ="$jsz" python3 - <<'PY'
import json
import os

jsz = json.loads(os.environ["JSZ"])
streams = [s for a in jsz.get("account_details") or [] for s in a.get("stream_detail") or []]
if not streams:
    print("  no streams yet (the gateways and workers create them at start)")
else:
    head = ("STREAM", "MESSAGES", "BYTES", "FIRST_SEQ", "LAST_SEQ", "SUBJECTS")
    print("  %-20s %10s %12s %10s %10s %9s" % head)
for s in sorted(streams, key=lambda s: s.get("name", "")):
    st = s.get("state", {})
    print("  %-20s %10d %12d %10d %10d %9d" % (
        s.get("name", "?"), st.get("messages", 0), st.get("bytes", 0),
        st.get("first_seq", 0), st.get("last_seq", 0), st.get("num_subjects", 0)))
for s in streams:
    for c in s.get("consumer_detail") or []:
        print("  consumer %s/%s: num_pending=%d num_ack_pending=%d num_redelivered=%d num_waiting=%d" % (
            s.get("name"), c.get("name"), c.get("num_pending", 0), c.get("num_ack_pending", 0),
            c.get("num_redelivered", 0), c.get("num_waiting", 0)))
for s in streams:
    name = s.get("name", "")
    if name.startswith("KV_"):
        st = s.get("state", {})
        print("  KV bucket %s: %d key(s) (sessions and cancel flags)" % (
            name[3:], st.get("num_subjects", st.get("messages", 0))))
PY
