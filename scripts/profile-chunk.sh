#!/usr/bin/env bash
# What one chunk costs, process by process, in instructions (repeatable on a
# noisy machine, where CPU seconds are not).
#
# Runs `chatctl bench --only e2e` (demo model at zero delay, a chunk per
# token) on one gateway and one worker, each under valgrind's callgrind with
# collection off; once chunks flow, counts instructions for WINDOW seconds
# of steady load only (start-up, warm-up and the bench's verification, which
# reads the file store, are left out), then divides by the chunks the worker
# published and the gateway forwarded in that window (their /metrics
# counters). nats-server and nginx are not under valgrind: their CPU seconds
# (/proc/PID/stat) per chunk in the same window are printed too, but every
# figure here is for a path slowed by valgrind, so batching differs from a
# native run: compare runs of this script with each other, and take µs per
# chunk at full speed from `just bench --only raw,e2e`.
#
#   scripts/profile-chunk.sh [e2e|paced|sse] [SESSIONS] [WINDOW_SECS]
#
# ANSWER_TOKENS=N sets the demo answers' length (the bench's default is
# 80): short answers make what each answer costs (a request, a
# subscription) stand out from what each chunk costs.
#
# e2e (default: 50 sessions, 20 s): the saturated path. How many chunks
# share a read, a wake-up or a write depends on timing, so its counts move
# by up to ~20 % between runs (more when the machine is busy): run it a few
# times. paced (default: 20 streams at 50 tokens/s, 20 s): a load the
# valgrind-slowed processes keep up with, so each chunk travels alone; its
# counts are the unbatched cost of a chunk and move much less. sse: the
# paced load over the WebSocket and then, on the same stack, through the
# AI SDK's `POST /api/ui/chat` (`--only paced,sse --sse-pairs 1`): the
# gateway's instructions and Nginx's CPU per chunk, one window each, side
# by side (the worker's do not depend on the client's transport).
#
# Needs valgrind and a release build (`cargo build --release -p gateway -p
# worker -p chatctl`; CHAT_BIN_DIR overrides target/release). Leaves the
# callgrind files (for `callgrind_annotate`) and a summary in
# run/profile-chunk-<pid>/; prints the summary.
set -euo pipefail

cd "$(dirname "$0")/.."
mode="${1:-e2e}"
case "$mode" in
    e2e) default_sessions=50 ;;
    paced|sse) default_sessions=20 ;;
    *) echo "usage: $0 [e2e|paced|sse] [SESSIONS] [WINDOW_SECS]" >&2; exit 2 ;;
esac
sessions="${2:-$default_sessions}"
window="${3:-20}"
bin_dir="$(cd "${CHAT_BIN_DIR:-target/release}" && pwd)"
out="$PWD/run/profile-chunk-$$"
mkdir -p "$out/bin"
NATS_SERVER_BIN="$(scripts/nats-server-path.sh)"
export NATS_SERVER_BIN

for tool in valgrind callgrind_control callgrind_annotate ss curl; do
    command -v "$tool" >/dev/null || { echo "profile-chunk: $tool is missing" >&2; exit 1; }
done
for b in gateway worker chatctl; do
    [ -x "$bin_dir/$b" ] || { echo "profile-chunk: no $bin_dir/$b (cargo build --release -p gateway -p worker -p chatctl)" >&2; exit 1; }
done

# The stack starts `gateway` and `worker` from CHAT_BIN_DIR: these wrappers
# put each under callgrind, instrumentation off (full speed, nothing
# counted) until this script turns it on.
for b in gateway worker; do
    cat >"$out/bin/$b" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --instr-atstart=no \\
    --callgrind-out-file="$out/callgrind.$b.%p" --log-file="$out/valgrind.$b.%p.log" \\
    "$bin_dir/$b" "\$@"
EOF
    chmod +x "$out/bin/$b"
done

# Long enough that the load is still running when the window closes; the
# bench then verifies the sessions and stops its stack itself.
measure=$((window + 20))
case "$mode" in
    e2e) load=(--only e2e --sessions "$sessions" --warmup-secs 5 --measure-secs "$measure") ;;
    paced) load=(--only paced --paced-loads "$sessions" --warmup-secs 5 --paced-secs "$measure") ;;
    sse) load=(--only paced,sse --sse-pairs 1 --paced-loads "$sessions" --warmup-secs 5 --paced-secs "$measure") ;;
esac
if [ -n "${ANSWER_TOKENS:-}" ]; then load+=(--answer-tokens "$ANSWER_TOKENS"); fi
CHAT_BIN_DIR="$out/bin" "$bin_dir/chatctl" bench "${load[@]}" --gateways 1 --workers 1 \
    --verify-sessions 5 >"$out/bench.log" 2>&1 &
bench=$!
# The stack's processes, once known: stopped here too if the bench is
# killed before it could stop them itself.
stack_pids=()
cleanup() {
    if kill -0 "$bench" 2>/dev/null; then
        kill "$bench" 2>/dev/null || true
        wait "$bench" 2>/dev/null || true
    fi
    local pid
    for pid in "${stack_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

# Children of the bench, found by what they run.
child_running() { # <pattern>
    local pid
    for pid in $(pgrep -P "$bench" || true); do
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$1"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}
metrics_url() { # <pid>: its one listening TCP port
    local port
    port="$(ss -ltnpH | grep "pid=$1," | awk '{print $4}' | sed 's/.*://' | head -1)"
    [ -n "$port" ] && echo "http://127.0.0.1:$port/metrics"
}
varz_url() { # <pid of nats-server>: its monitoring endpoint
    local port
    for port in $(ss -ltnpH | grep "pid=$1," | awk '{print $4}' | sed 's/.*://'); do
        if curl -sf "http://127.0.0.1:$port/varz" >/dev/null; then
            echo "http://127.0.0.1:$port/varz"
            return 0
        fi
    done
    return 1
}
varz() { # <url> <field>: a number from /varz
    curl -sf "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"
}
counter() { # <url> <metric>
    curl -sf "$1" | awk -v m="$2" '$1 == m {print $2; found=1} END {if (!found) print 0}'
}
cpu_ticks() { # <pid>: user + system ticks
    awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"
}
wait_for() { # <seconds> <command...>
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$bench" 2>/dev/null; then
            echo "profile-chunk: gave up waiting for: $*; bench log:" >&2
            tail -20 "$out/bench.log" >&2
            exit 1
        fi
        sleep 0.5
    done
}

wait_for 120 child_running "$bin_dir/gateway"
wait_for 120 child_running "$bin_dir/worker"
gateway="$(child_running "$bin_dir/gateway")"
worker="$(child_running "$bin_dir/worker")"
nats="$(child_running "nats-server")"
stack_pids=("$gateway" "$worker" "$nats")
for pid in $(pgrep -P "$bench" -x nginx || true); do stack_pids+=("$pid"); done
wait_for 120 metrics_url "$gateway"
wait_for 120 metrics_url "$worker"
gw_url="$(metrics_url "$gateway")"
wk_url="$(metrics_url "$worker")"
nats_varz="$(varz_url "$nats")"
forwarded=chat_gateway_chunks_forwarded_total
published=chat_worker_chunks_published_total
chunks_flow() { [ "$(counter "$gw_url" "$forwarded")" -gt 200 ]; }
wait_for 300 chunks_flow
sleep 2 # past the first turns' start-up

nginx_ticks() {
    local total=0 pid
    for pid in $(pgrep -x nginx || true); do
        # Only the bench's own nginx (its master is the bench's child).
        if [ "$(ps -o ppid= -p "$pid" | tr -d ' ')" = "$bench" ] || \
           [ "$(ps -o ppid= -p "$(ps -o ppid= -p "$pid" | tr -d ' ')" 2>/dev/null | tr -d ' ')" = "$bench" ]; then
            total=$((total + $(cpu_ticks "$pid")))
        fi
    done
    echo "$total"
}

instructions() { # <file prefix> [dump]: the instructions of a dump (the first)
    callgrind_annotate "$1.${2:-1}" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done=1}'
}

if [ "$mode" = sse ]; then
    # One window over the WebSocket, one through SSE; each dump holds one.
    gateway_window() { # <label>
        local fw0 fw1 nginx0 nginx1
        fw0="$(counter "$gw_url" "$forwarded")"
        nginx0="$(nginx_ticks)"
        callgrind_control -i on "$gateway" >/dev/null 2>&1
        sleep "$window"
        callgrind_control -i off "$gateway" >/dev/null 2>&1
        fw1="$(counter "$gw_url" "$forwarded")"
        nginx1="$(nginx_ticks)"
        callgrind_control -d "$gateway" >/dev/null 2>&1
        echo "$1 $((fw1 - fw0)) $((nginx1 - nginx0))" >>"$out/windows"
    }
    gateway_window websocket
    sse_started() { grep -q "through POST /api/ui/chat" "$out/bench.log"; }
    wait_for 300 sse_started
    sleep 8 # past the SSE run's warm-up
    gateway_window sse
    wait "$bench" || echo "profile-chunk: the bench failed; see $out/bench.log" >&2
    {
        echo "profile-chunk sse: $sessions paced streams${ANSWER_TOKENS:+ ($ANSWER_TOKENS-token answers)}, ${window}s window per transport, one gateway under callgrind ($bin_dir)"
        part=1
        while read -r label chunks ticks; do
            ir="$(instructions "$out/callgrind.gateway.$gateway" "$part")"
            awk -v l="$label" -v ir="$ir" -v n="$chunks" -v t="$ticks" 'BEGIN {
                printf "%-9s gateway instructions per chunk: %.0f (%d chunks); nginx CPU per chunk (slowed path): %.1f us\n", l, ir / n, n, t * 1e4 / n }'
            part=$((part + 1))
        done <"$out/windows"
        echo "callgrind files: $out (part 1: WebSocket, part 2: SSE)"
    } | tee "$out/summary.txt"
    exit 0
fi

fw0="$(counter "$gw_url" "$forwarded")"
pb0="$(counter "$wk_url" "$published")"
nats0="$(cpu_ticks "$nats")"
in0="$(varz "$nats_varz" in_msgs)"
out0="$(varz "$nats_varz" out_msgs)"
nginx0="$(nginx_ticks)"
callgrind_control -i on "$gateway" >/dev/null 2>&1
callgrind_control -i on "$worker" >/dev/null 2>&1
sleep "$window"
callgrind_control -i off "$gateway" >/dev/null 2>&1
callgrind_control -i off "$worker" >/dev/null 2>&1
fw1="$(counter "$gw_url" "$forwarded")"
pb1="$(counter "$wk_url" "$published")"
nats1="$(cpu_ticks "$nats")"
in1="$(varz "$nats_varz" in_msgs)"
out1="$(varz "$nats_varz" out_msgs)"
nginx1="$(nginx_ticks)"
callgrind_control -d "$gateway" >/dev/null 2>&1
callgrind_control -d "$worker" >/dev/null 2>&1
wait "$bench" || echo "profile-chunk: the bench failed; see $out/bench.log" >&2

gw_ir="$(instructions "$out/callgrind.gateway.$gateway")"
wk_ir="$(instructions "$out/callgrind.worker.$worker")"
fw=$((fw1 - fw0))
pb=$((pb1 - pb0))
{
    echo "profile-chunk $mode: $sessions sessions${ANSWER_TOKENS:+ ($ANSWER_TOKENS-token answers)}, ${window}s window, one gateway and one worker under callgrind ($bin_dir)"
    echo "chunks: gateway forwarded $fw, worker published $pb"
    awk -v ir="$gw_ir" -v n="$fw" 'BEGIN {printf "gateway instructions per chunk: %.0f (%s in all)\n", ir / n, ir}'
    awk -v ir="$wk_ir" -v n="$pb" 'BEGIN {printf "worker instructions per chunk:  %.0f (%s in all)\n", ir / n, ir}'
    awk -v i="$((in1 - in0))" -v o="$((out1 - out0))" -v n="$pb" 'BEGIN {printf "nats-server messages per chunk: %.2f in, %.2f out (a raw JetStream publish: 1 in, 1 out)\n", i / n, o / n}'
    awk -v t="$((nats1 - nats0))" -v n="$pb" 'BEGIN {printf "nats-server CPU per chunk (slowed path, for comparison only): %.1f us\n", t * 1e4 / n}'
    awk -v t="$((nginx1 - nginx0))" -v n="$fw" 'BEGIN {printf "nginx CPU per chunk (slowed path, for comparison only): %.1f us\n", t * 1e4 / n}'
    echo "callgrind files: $out (callgrind_annotate FILE | head -60)"
} | tee "$out/summary.txt"
