# The menu of this project: `just --list`. CI runs `just test` (.ci/run).

set shell := ["bash", "-euo", "pipefail", "-c"]

# Recipes that start servers export NATS_SERVER_BIN, the real nats-server
# binary (never a pyenv shim), so scripts and the Rust harness find it at once.

# Show the recipes
default:
    @just --list

# Install what is missing: just, nats-server (pip), nginx, curl (apt); --browser adds Chromium
install-deps *args:
    scripts/install-deps.sh {{args}}

# Build and start nats-server, gateways, workers and Nginx on http://127.0.0.1:8080: just up [GATEWAYS] [WORKERS] [--model local] [--auth jwt]
up *args:
    scripts/install-deps.sh
    NATS_SERVER_BIN="$(scripts/nats-server-path.sh)" scripts/up.sh {{args}}

# Stop exactly what `just up` started (SIGTERM, then SIGKILL after a timeout)
down:
    scripts/down.sh

# Each process alive or not, each gateway's /health, streams, consumer and KV counts
status:
    scripts/status.sh

# Follow every log under run/logs (or only the named ones: just logs gateway-1 nats)
logs *names:
    scripts/logs.sh {{names}}

# Start (up: also the missing nodes of a running one), restart one node (restart n3) or stop (down) a 3-node JetStream cluster for R3, each node a host of its own (netns) where allowed; see README
cluster action="up" *args:
    scripts/install-deps.sh
    NATS_SERVER_BIN="$(scripts/nats-server-path.sh)" scripts/cluster.sh {{action}} {{args}}

# Build the container images from Debian packages, no registry (base cached): gateway, worker, chatctl, nats, nginx
images:
    scripts/install-deps.sh --containers
    NATS_SERVER_BIN="$(scripts/nats-server-path.sh)" scripts/images.sh

# The system in containers (deploy/compose.yaml): just compose up [--scale worker=N] | down [--volumes] | status
compose action="status" *args:
    scripts/install-deps.sh --containers
    NATS_SERVER_BIN="$(scripts/nats-server-path.sh)" scripts/compose.sh {{action}} {{args}}

# Everything CI checks: formatting, clippy, build, Rust tests, web tests, the compose deployment
test: prerequisites && test-web test-compose
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo build --workspace
    NATS_SERVER_BIN="$(scripts/nats-server-path.sh)" cargo test --workspace

# Install the prerequisites of `just test` (browser, Redis and the bench peer's npm packages, podman, and the local model server included)
prerequisites:
    scripts/install-deps.sh --browser --bench --containers
    scripts/local-model.sh install

# The web UI's tests: Vitest, the UI in headless Chromium, and end to end against a real stack (anonymous, then GATEWAY_AUTH=jwt)
test-web:
    if [ -f web/package.json ]; then NATS_SERVER_BIN="$(scripts/nats-server-path.sh)" scripts/test-web.sh; else echo "no web/package.json: skipping web tests"; fi

# The compose deployment's test: images of the debug binaries, the deployment up, containers killed mid-answer, all removed after
test-compose:
    scripts/install-deps.sh --containers
    cargo build -p gateway -p worker -p chatctl
    NATS_SERVER_BIN="$(scripts/nats-server-path.sh)" cargo test -p systest --test compose -- --ignored --nocapture

# Apply the JetStream layout, or check the server's for drift (exit 1), as ops (run/credentials/ops.nk): just layout apply|check [--nats-url URL] [CHAT_* flags]
layout action="check" *args:
    cargo build --release -p chatctl
    if [ -z "${NATS_NKEY_FILE:-}" ] && [ -f run/credentials/ops.nk ]; then export NATS_NKEY_FILE="$PWD/run/credentials/ops.nk"; fi; \
    if [ -z "${NATS_CA_FILE:-}" ] && [ "${NATS_TLS:-}" = 1 ]; then export NATS_CA_FILE="$PWD/run/credentials/ca.pem"; fi; \
    target/release/chatctl layout {{action}} {{args}}

# Run `chatctl recovery` (arguments passed through; see its --help; --cluster for the 3-node cluster faults)
recovery *args:
    cargo build --release -p gateway -p worker -p chatctl
    NATS_SERVER_BIN="$(scripts/nats-server-path.sh)" CHAT_BIN_DIR="$PWD/target/release" target/release/chatctl recovery {{args}}

# Run `chatctl soak` (an hour of mixed load with faults by default; arguments passed through, e.g. --duration 2m); CSV and PNG in run/soak/
soak *args:
    cargo build --release -p gateway -p worker -p chatctl
    NATS_SERVER_BIN="$(scripts/nats-server-path.sh)" CHAT_BIN_DIR="$PWD/target/release" target/release/chatctl soak {{args}}

# Run `chatctl bench` (arguments passed through; see its --help); installs Redis and the peer's npm packages first
bench *args:
    scripts/install-deps.sh --bench
    cargo build --release -p gateway -p worker -p chatctl
    NATS_SERVER_BIN="$(scripts/nats-server-path.sh)" CHAT_BIN_DIR="$PWD/target/release" target/release/chatctl bench {{args}}

# Instructions per chunk of gateway and worker under callgrind: just profile-chunk [e2e|paced|sse] [SESSIONS] [WINDOW_SECS]
profile-chunk *args:
    cargo build --release -p gateway -p worker -p chatctl
    NATS_SERVER_BIN="$(scripts/nats-server-path.sh)" scripts/profile-chunk.sh {{args}}

# Take the UI screenshots (npm run screenshots in web/)
screenshots:
    if [ -f web/package.json ]; then cd web && npm ci --no-audit --no-fund --loglevel=error && npm run screenshots; else echo "no web/package.json"; exit 1; fi
