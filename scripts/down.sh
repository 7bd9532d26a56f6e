#!/usr/bin/env bash
# Stops exactly the processes `scripts/up.sh` (or `scripts/cluster.sh up`)
# started: the pids in run/*.pid (and run/cluster/*.pid), never anything
# found by name. Nginx first, then gateways (they close WebSockets with 1012),
# then workers (they hand unfinished jobs back), then NATS and the local
# model server (`just up --model local`). SIGTERM, then
# SIGKILL after DOWN_TIMEOUT_SECS (default 15). Removes the pid files.
#
#   scripts/down.sh [--cluster | --stack]   (--cluster: only the 3-node
#       cluster, its namespaces and bridge included; --stack: all but the
#       cluster, so a failed `up` never stops a cluster it did not start)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run="${RUN_DIR:-$root/run}"
grace="${DOWN_TIMEOUT_SECS:-15}"

dirs=("$run")
cluster=1
[ "${1:-}" = --cluster ] && dirs=()
[ "${1:-}" = --stack ] && cluster=0

# The binary a pid file's process must be, so a recycled pid is never hit.
expected() {
    case "$1" in
        nginx) echo nginx ;;
        nats | n[0-9]*) echo nats-server ;;
        gateway-*) echo gateway ;;
        worker-*) echo worker ;;
        local-model) echo python ;;
        *) echo "" ;;
    esac
}

# stop GROUP...: SIGTERM to each pid file's process, wait, SIGKILL the rest.
stop() {
    local pids=() files=() f pid name want comm
    for f in "$@"; do
        [ -e "$f" ] || continue
        pid="$(cat "$f" 2>/dev/null || true)"
        name="$(basename "$f" .pid)"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            want="$(expected "$name")"
            comm="$(ps -o comm= -p "$pid" 2>/dev/null || true)"
            if [ -n "$want" ] && [ "$comm" != "$want" ]; then
                echo "down: $name: pid $pid is now '$comm', not $want; leaving it alone"
            else
                echo "down: stopping $name (pid $pid)"
                kill -TERM "$pid" 2>/dev/null || true
                pids+=("$pid")
            fi
        fi
        files+=("$f")
    done
    local deadline=$((SECONDS + grace))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "down: pid $pid did not stop within ${grace}s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [ "${#files[@]}" -gt 0 ]; then rm -f "${files[@]}"; fi
}

for dir in "${dirs[@]}"; do
    [ -d "$dir" ] || continue
    shopt -s nullglob
    stop "$dir"/nginx.pid
    stop "$dir"/gateway-*.pid
    stop "$dir"/worker-*.pid
    stop "$dir"/*.pid
    shopt -u nullglob
    rm -f "$dir"/*.port "$dir"/*.monitor-port
done

# The 3-node cluster (`just cluster up`): its nodes, namespaces and bridge,
# by the same code that made them (`chatctl cluster down`).
cdir="$run/cluster"
if [ "$cluster" = 1 ] && [ -d "$cdir" ]; then
    chatctl="$root/target/release/chatctl"
    if [ -x "$chatctl" ]; then
        "$chatctl" cluster --dir "$cdir" down
    else
        # No chatctl built: stop the pids; the namespaces by their fixed names.
        shopt -s nullglob
        stop "$cdir"/n*.pid
        shopt -u nullglob
        if [ -s "$cdir/network" ]; then
            prefix="$(cut -d' ' -f1 "$cdir/network")"
            for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$prefix-" || true); do
                ip netns del "$ns" || true
            done
            ip link del "${prefix}b" 2>/dev/null || true
            rm -f "$cdir/network"
        fi
        rm -f "$cdir"/*.client-url "$cdir"/*.monitor-url "$cdir/urls"
    fi
fi
echo "down: done"
