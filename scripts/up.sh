#!/usr/bin/env bash
# Starts the whole system on this machine, each part a process with its pid
# file and log under run/: nats-server (JetStream), GATEWAYS gateways, WORKERS
# workers and Nginx in front, then waits until http://127.0.0.1:NGINX_PORT/health
# answers. Already up: says so and exits 0. Before any service starts, it
# applies the JetStream layout (`chatctl layout apply`, log in
# run/logs/layout.log): the services only verify it and refuse to start when
# it differs from their CHAT_* settings.
#
#   scripts/up.sh [GATEWAYS] [WORKERS] [--model demo|local] [--auth session|jwt]
#
# --auth jwt (or GATEWAY_AUTH=jwt): the gateways take the app's JWT instead
# of anonymous session tokens (README, "Bring your own login"). Unless
# GATEWAY_JWT_* keys are set, an HMAC secret is made in
# run/credentials/jwt-hmac.key (0600) on first start and reused;
# `chatctl token --sub alice` mints a token with it.
#
# --model local (or MODEL=local): also a real language model on the CPU
# (scripts/local-model.sh: llama-cpp-python's OpenAI-compatible server with
# SmolLM2-135M, built from source the first time) as the process
# local-model on LOCAL_MODEL_PORT (8090), and the workers pointed at it
# (WORKER_BACKEND=openai, OPENAI_BASE_URL, OPENAI_MODEL). The default, demo,
# is the built-in demo model.
#
# Environment (defaults): GATEWAYS=3 WORKERS=3 NGINX_PORT=8080
# GATEWAY_BASE_PORT=3001 WORKER_METRICS_BASE_PORT=9101 NATS_PORT=4222
# NATS_MONITOR_PORT=8222 UP_TIMEOUT_SECS=60 BUILD_PROFILE=release
# SKIP_BUILD=1 (use the binaries already built) SKIP_WEB_BUILD=1
# CHAT_BIN_DIR (where gateway, worker and chatctl are; default target/BUILD_PROFILE).
# NATS_URL set: use that NATS (e.g. the 3-node cluster) and start none.
# NATS_SYNC_INTERVAL (120s): how often the started nats-server fsyncs
# JetStream files (`sync_interval`; `always` = before every ack; README,
# "Durability"); a duration in seconds form ("120s", "10s") or "always".
# Every other variable (CHAT_*, WORKER_*, GATEWAY_*, DEMO_*, OPENAI_*,
# RUST_LOG, LOG_FORMAT, OTEL_*) reaches the gateways and workers as is (and
# CHAT_* the layout step too).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run="${RUN_DIR:-$root/run}"
logs="$run/logs"
model="${MODEL:-demo}"
auth="${GATEWAY_AUTH:-session}"
numbers=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --model) model="${2:-}"; shift 2 || { echo "up: --model needs demo or local" >&2; exit 2; } ;;
        --model=*) model="${1#--model=}"; shift ;;
        --auth) auth="${2:-}"; shift 2 || { echo "up: --auth needs session or jwt" >&2; exit 2; } ;;
        --auth=*) auth="${1#--auth=}"; shift ;;
        *) numbers+=("$1"); shift ;;
    esac
done
case "$model" in
    demo | local) ;;
    *) echo "up: unknown model '$model' (demo or local)" >&2; exit 2 ;;
esac
case "$auth" in
    session | jwt) ;;
    *) echo "up: unknown auth '$auth' (session or jwt)" >&2; exit 2 ;;
esac
if [ "${#numbers[@]}" -gt 2 ]; then
    echo "usage: scripts/up.sh [GATEWAYS] [WORKERS] [--model demo|local] [--auth session|jwt]" >&2
    exit 2
fi
gateways="${numbers[0]:-${GATEWAYS:-3}}"
workers="${numbers[1]:-${WORKERS:-3}}"
model_port="${LOCAL_MODEL_PORT:-8090}"
nginx_port="${NGINX_PORT:-8080}"
gateway_base="${GATEWAY_BASE_PORT:-3001}"
worker_base="${WORKER_METRICS_BASE_PORT:-9101}"
nats_port="${NATS_PORT:-4222}"
nats_monitor_port="${NATS_MONITOR_PORT:-8222}"
timeout="${UP_TIMEOUT_SECS:-60}"
profile="${BUILD_PROFILE:-release}"
url="http://127.0.0.1:$nginx_port"

say() { echo "up: $*"; }

for n in "$gateways" "$workers" "$nginx_port" "$gateway_base" "$worker_base" "$model_port"; do
    case "$n" in '' | *[!0-9]*) echo "up: not a number: '$n'" >&2; exit 2 ;; esac
done
if [ "$gateways" -lt 1 ]; then
    echo "up: at least one gateway is needed" >&2
    exit 2
fi

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { cat "$1" 2>/dev/null || true; }
healthy() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Already running?
mkdir -p "$run"
running=()
for f in "$run"/*.pid; do
    [ -e "$f" ] || continue
    if alive "$(pid_of "$f")"; then running+=("$(basename "$f" .pid)"); fi
done
if [ "${#running[@]}" -gt 0 ]; then
    if alive "$(pid_of "$run/nginx.pid")" && healthy "$url/health"; then
        say "already up at $url (${running[*]}); just status for details"
        exit 0
    fi
    echo "up: partly running (${running[*]}) but $url/health does not answer; run 'just down' first" >&2
    exit 1
fi
rm -f "$run"/*.pid "$run"/*.port

# The tools.
nats_bin=""
if [ -z "${NATS_URL:-}" ]; then
    nats_bin="$("$root/scripts/nats-server-path.sh")" || {
        echo "up: run scripts/install-deps.sh first" >&2
        exit 1
    }
fi
nginx_bin="$(command -v nginx || true)"
[ -n "$nginx_bin" ] || { [ -x /usr/sbin/nginx ] && nginx_bin=/usr/sbin/nginx; } || true
if [ -z "$nginx_bin" ]; then
    echo "up: nginx not found: run scripts/install-deps.sh first" >&2
    exit 1
fi
command -v curl >/dev/null || { echo "up: curl not found: run scripts/install-deps.sh" >&2; exit 1; }

# Ports free?
ports=("$nginx_port")
for ((i = 0; i < gateways; i++)); do ports+=("$((gateway_base + i))"); done
for ((i = 0; i < workers; i++)); do ports+=("$((worker_base + i))"); done
[ -n "$nats_bin" ] && ports+=("$nats_port" "$nats_monitor_port")
[ "$model" = local ] && ports+=("$model_port")
for p in "${ports[@]}"; do
    if port_taken "$p"; then
        echo "up: port $p is already in use on 127.0.0.1 (set the *_PORT variables to move)" >&2
        exit 1
    fi
done

# Build.
if [ "$model" = local ]; then
    # Says when it builds, and how long that takes; later a quick check.
    "$root/scripts/local-model.sh" install
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    packages=()
    members="$(cd "$root" && cargo metadata --no-deps --format-version 1 |
        python3 -c 'import json,sys; print(" ".join(p["name"] for p in json.load(sys.stdin)["packages"]))')"
    for p in gateway worker chatctl; do
        case " $members " in *" $p "*) packages+=(-p "$p") ;; esac
    done
    flag=()
    [ "$profile" = release ] && flag=(--release)
    say "cargo build ${flag[*]} ${packages[*]}"
    (cd "$root" && cargo build "${flag[@]}" "${packages[@]}")
fi
bin_dir="${CHAT_BIN_DIR:-$root/target/$profile}"
for b in gateway worker chatctl; do
    if [ ! -x "$bin_dir/$b" ]; then
        echo "up: $bin_dir/$b is missing (build failed or SKIP_BUILD=1 without a build)" >&2
        exit 1
    fi
done
web_root="$root/web/dist"
if [ -f "$root/web/package.json" ] && [ "${SKIP_WEB_BUILD:-0}" != 1 ]; then
    say "building the web UI (npm ci && npm run build in web/)"
    (cd "$root/web" && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)
fi

# Start. Logs are files: no colour codes in them.
export NO_COLOR="${NO_COLOR:-1}"
mkdir -p "$logs"
started=()

fail() {
    echo "up: $1" >&2
    if [ -n "${2:-}" ] && [ -f "$2" ]; then
        echo "---- last lines of $2 ----" >&2
        tail -n 30 "$2" >&2
        echo "----" >&2
    fi
    echo "up: stopping what this up started (${started[*]:-nothing}); a NATS or cluster it did not start keeps running" >&2
    "$root/scripts/down.sh" --stack >&2 || true
    exit 1
}

# start NAME PORT LOG CMD...: runs CMD in the background with its own log,
# records its pid (the real binary's: never a shim or a subshell) and port.
start() {
    local name="$1" port="$2" log="$3"
    shift 3
    "$@" >"$log" 2>&1 </dev/null &
    echo "$!" >"$run/$name.pid"
    echo "$port" >"$run/$name.port"
    started+=("$name")
}

# wait_ready NAME URL LOG: until URL answers 2xx, the process dies, or the timeout.
wait_ready() {
    local name="$1" check="$2" log="$3" deadline=$((SECONDS + timeout))
    until healthy "$check"; do
        alive "$(pid_of "$run/$name.pid")" || fail "$name exited during start" "$log"
        [ "$SECONDS" -lt "$deadline" ] || fail "$name: $check did not answer within ${timeout}s" "$log"
        sleep 0.2
    done
}

if [ "$model" = local ]; then
    model_url="http://127.0.0.1:$model_port"
    model_name="$("$root/scripts/local-model.sh" name)"
    start local-model "$model_port" "$logs/local-model.log" "$root/scripts/local-model.sh" serve "$model_port"
    wait_ready local-model "$model_url/v1/models" "$logs/local-model.log"
    say "local model $model_name on $model_url (OpenAI-compatible; the workers use it)"
    export WORKER_BACKEND=openai OPENAI_BASE_URL="$model_url" OPENAI_MODEL="$model_name"
fi

# NATS access (README, "NATS access"): an nkey per role (gateway, worker,
# ops) in run/credentials, made on first start and reused; with TLS, a local
# CA and the server's certificate there too. NATS_TLS=1 turns TLS on; with
# NATS_URL (a cluster from `just cluster up`, which has TLS on), it is on
# when run/credentials holds the CA.
credentials="$run/credentials"
nats_tls="${NATS_TLS:-}"
if [ -z "$nats_tls" ]; then
    nats_tls=0
    [ -n "${NATS_URL:-}" ] && [ -f "$credentials/ca.pem" ] && nats_tls=1
fi
case "$nats_tls" in
    0 | 1) ;;
    *) fail "NATS_TLS='$nats_tls': use 1 (TLS) or 0" ;;
esac
credential_flags=(--dir "$credentials")
[ "$nats_tls" = 1 ] && credential_flags+=(--tls)
if [ -n "$nats_bin" ]; then
    credential_flags+=(--server-config-base "$root/nats/nats-server.conf"
        --server-config-out "$run/nats/nats-server.conf")
fi
"$bin_dir/chatctl" credentials "${credential_flags[@]}" >"$logs/credentials.log" 2>&1 ||
    fail "chatctl credentials could not make the NATS credentials" "$logs/credentials.log"
# GATEWAY_AUTH=jwt: the app's login. Without keys of its own, a development
# HMAC secret, made once, readable by this user only.
jwt_secret=""
if [ "$auth" = jwt ]; then
    export GATEWAY_AUTH=jwt
    if [ -z "${GATEWAY_JWT_HMAC_SECRET_FILE:-}${GATEWAY_JWT_JWKS_FILE:-}${GATEWAY_JWT_JWKS_URL:-}" ]; then
        jwt_secret="$credentials/jwt-hmac.key"
        if [ ! -s "$jwt_secret" ]; then
            (umask 077 && head -c 48 /dev/urandom | base64 -w0 >"$jwt_secret")
        fi
        chmod 600 "$jwt_secret"
        export GATEWAY_JWT_HMAC_SECRET_FILE="$jwt_secret"
    fi
fi
# Each process gets its role's nkey file (never the seed itself) and the CA.
access() {
    echo "--nats-nkey-file" "$credentials/$1.nk"
    [ "$nats_tls" = 1 ] && echo "--nats-ca-file" "$credentials/ca.pem"
    true
}

if [ -n "$nats_bin" ]; then
    nats_url="nats://127.0.0.1:$nats_port"
    # nats/nats-server.conf reads it (`sync_interval: $NATS_SYNC_INTERVAL`).
    export NATS_SYNC_INTERVAL="${NATS_SYNC_INTERVAL:-120s}"
    case "$NATS_SYNC_INTERVAL" in
        always | [0-9]*s | [0-9]*ms) ;;
        *) fail "NATS_SYNC_INTERVAL='$NATS_SYNC_INTERVAL': use a duration like 120s or 500ms, or always" ;;
    esac
    mkdir -p "$run/nats-data"
    start nats "$nats_port" "$logs/nats.log" "$nats_bin" -c "$run/nats/nats-server.conf" \
        -sd "$run/nats-data" -p "$nats_port" -m "$nats_monitor_port"
    echo "$nats_monitor_port" >"$run/nats.monitor-port"
    wait_ready nats "http://127.0.0.1:$nats_monitor_port/healthz?js-enabled-only=true" "$logs/nats.log"
    tls_note=""
    [ "$nats_tls" = 1 ] && tls_note=", TLS with the CA $credentials/ca.pem"
    say "nats-server on $nats_url (monitoring http://127.0.0.1:$nats_monitor_port; nkeys in $credentials$tls_note)"
else
    nats_url="$NATS_URL"
    say "using NATS at $nats_url"
fi

# The layout is operations' job: applied here with the same CHAT_* settings
# the services get; they only verify it at start.
# shellcheck disable=SC2046 # access prints flags, one word each
"$bin_dir/chatctl" layout apply --nats-url "$nats_url" $(access ops) >"$logs/layout.log" 2>&1 ||
    fail "chatctl layout apply could not set up the JetStream layout" "$logs/layout.log"
say "JetStream layout applied ($(grep -c ': created' "$logs/layout.log" || true) part(s) created, $(grep -c ': updated' "$logs/layout.log" || true) updated; $logs/layout.log)"

gateway_ports=()
for ((i = 1; i <= gateways; i++)); do
    port=$((gateway_base + i - 1))
    gateway_ports+=("$port")
    start "gateway-$i" "$port" "$logs/gateway-$i.log" "$bin_dir/gateway" \
        --nats-url "$nats_url" --listen "127.0.0.1:$port" --node "gw-$i" $(access gateway)
done
for ((i = 1; i <= workers; i++)); do
    port=$((worker_base + i - 1))
    start "worker-$i" "$port" "$logs/worker-$i.log" "$bin_dir/worker" \
        --nats-url "$nats_url" --metrics-listen "127.0.0.1:$port" --node "worker-$i" $(access worker)
done
for ((i = 1; i <= gateways; i++)); do
    wait_ready "gateway-$i" "http://127.0.0.1:$((gateway_base + i - 1))/health" "$logs/gateway-$i.log"
done
for ((i = 1; i <= workers; i++)); do
    wait_ready "worker-$i" "http://127.0.0.1:$((worker_base + i - 1))/health" "$logs/worker-$i.log"
done
say "$gateways gateway(s) on ports ${gateway_ports[*]}; $workers worker(s) with metrics from port $worker_base"

mkdir -p "$run/nginx"
NGINX_LOG_DIR="$logs" "$root/scripts/render-nginx.sh" "$run/nginx" "$web_root" "$nginx_port" \
    "${gateway_ports[@]}" >"$run/nginx/nginx.conf"
"$nginx_bin" -p "$run/nginx" -e "$logs/nginx-error.log" -c nginx.conf -t >"$logs/nginx-check.log" 2>&1 ||
    fail "nginx rejected its config" "$logs/nginx-check.log"
start nginx "$nginx_port" "$logs/nginx.log" "$nginx_bin" -p "$run/nginx" -e "$logs/nginx-error.log" \
    -c nginx.conf -g 'daemon off;'
wait_ready nginx "$url/health" "$logs/nginx-error.log"

say "started ${started[*]}"
[ -f "$web_root/index.html" ] || say "note: web/dist has no index.html; the UI is not built"
echo
echo "  chat UI and API: $url"
if [ "$auth" = jwt ]; then
    echo "  login: GATEWAY_AUTH=jwt; paste a token into the UI (or open $url/#token=TOKEN)"
    if [ -n "$jwt_secret" ]; then
        echo "  a token: $bin_dir/chatctl token --sub alice --ttl 1h --secret-file $jwt_secret"
    fi
fi
echo "  logs: just logs    state: just status    stop: just down"
