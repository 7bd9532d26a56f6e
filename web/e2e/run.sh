#!/usr/bin/env bash
# Runs the browser end-to-end tests (e2e/chat.e2e.mjs) against the real stack.
#
# - CHAT_BASE_URL set: test that stack as it is.
# - else, if a stack answers on http://127.0.0.1:${NGINX_PORT:-8080}: use it.
# - else: start one with scripts/up.sh, slowed down so that "mid-answer" lasts
#   a few seconds (DEMO_TOKENS_PER_SEC=25, DEMO_ANSWER_TOKENS=150), run the
#   tests, and stop it with scripts/down.sh.
# The SIGKILL test finds gateway pids in run/*.pid (CHAT_PID_DIR to override)
# and needs at least two gateways (up.sh starts three).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
web="$(dirname "$here")"
repo="$(dirname "$web")"
cd "$web"

[ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error


if [ -z "${CHAT_BASE_URL:-}" ]; then
  export CHAT_BASE_URL="http://127.0.0.1:${NGINX_PORT:-8080}"
  if ! curl -fsS -o /dev/null --max-time 2 "$CHAT_BASE_URL/health" 2>/dev/null; then
    [ -x "$repo/scripts/up.sh" ] || { echo "no stack at $CHAT_BASE_URL and no scripts/up.sh" >&2; exit 2; }
    export DEMO_TOKENS_PER_SEC="${DEMO_TOKENS_PER_SEC:-25}" DEMO_ANSWER_TOKENS="${DEMO_ANSWER_TOKENS:-150}"
    "$repo/scripts/up.sh"   # waits until /health answers; builds web/dist too

    trap '"$repo/scripts/down.sh" >/dev/null 2>&1 || true' EXIT
  fi
fi
[ -f dist/index.html ] || npm run build

echo "e2e against $CHAT_BASE_URL"
node --test --test-concurrency=1 e2e/chat.e2e.mjs
