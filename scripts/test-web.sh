#!/usr/bin/env bash
# The web UI's tests, as `just test` runs them:
#   1. unit tests of the client state machine (Vitest),
#   2. the UI in headless Chromium against a scripted gateway (e2e/ui.e2e.mjs),
#   3. end to end in headless Chromium against the REAL stack behind Nginx
#      (e2e/chat.e2e.mjs): its own nats-server, 3 gateways, 3 workers and
#      Nginx on their own ports and run folder, from the debug binaries that
#      `cargo build --workspace` made, stopped again at the end;
#   4. the AI SDK example app (web/examples/ai-sdk-chat) in headless
#      Chromium; assistant-ui's useChatRuntime mounted with React in jsdom
#      (e2e/assistant-ui.e2e.mjs); and the real Vercel AI SDK (ai 7 and
#      ai 6, headless) on the same stack's SSE endpoints (e2e/ai-sdk.e2e.mjs),
#      which kills two workers, so it runs last on this stack;
#   5. a fresh stack on the same ports with the app's login (`up.sh --auth
#      jwt`): two browser profiles as one user on different gateways and a
#      third as another (e2e/users.e2e.mjs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/web"
npm ci --no-audit --no-fund --loglevel=error
npm test
npm run build
npm run build:example
npm run test:ui

export RUN_DIR="$root/run/test-web${TEST_WEB_PORT_OFFSET:+-$TEST_WEB_PORT_OFFSET}"
# TEST_WEB_PORT_OFFSET moves every port, so two checkouts can run this at once.
offset="${TEST_WEB_PORT_OFFSET:-0}"
export NGINX_PORT="${TEST_WEB_NGINX_PORT:-$((28080 + offset))}" GATEWAY_BASE_PORT=$((23001 + offset)) WORKER_METRICS_BASE_PORT=$((29101 + offset))
export NATS_PORT=$((24222 + offset)) NATS_MONITOR_PORT=$((28222 + offset))
# The AI SDK example is served from an origin of its own: CORS on the path.
export EXAMPLE_PORT=$((28090 + offset))
export GATEWAY_CORS_ORIGINS="http://127.0.0.1:$EXAMPLE_PORT"
export BUILD_PROFILE="${TEST_WEB_PROFILE:-debug}" SKIP_BUILD=1 SKIP_WEB_BUILD=1
# Slow enough that "mid-answer" lasts seconds: Stop, reload and failover happen inside one.
# The demo thinks a little first, so the AI SDK test sees reasoning parts.
export DEMO_TOKENS_PER_SEC=25 DEMO_ANSWER_TOKENS=150 DEMO_REASONING_TOKENS=8
export CHAT_PID_DIR="$RUN_DIR" CHAT_BASE_URL="http://127.0.0.1:$NGINX_PORT"
"$root/scripts/down.sh" >/dev/null 2>&1 || true
rm -rf "$RUN_DIR"
trap '"$root/scripts/down.sh" >/dev/null 2>&1 || true' EXIT
"$root/scripts/up.sh"
npm run test:e2e
npm run test:ai-sdk

# The app's login: the same ports, the gateways in GATEWAY_AUTH=jwt mode with
# the development key up.sh makes in $RUN_DIR/credentials.
"$root/scripts/down.sh" >/dev/null 2>&1 || true
"$root/scripts/up.sh" --auth jwt
CHAT_JWT_SECRET_FILE="$RUN_DIR/credentials/jwt-hmac.key" npm run test:e2e:users
