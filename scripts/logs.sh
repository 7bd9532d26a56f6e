#!/usr/bin/env bash
# Follows every log of the running system (run/logs/*.log), new files included
# as long as they exist when this starts.  scripts/logs.sh [NAME...] follows
# only those (e.g. gateway-1 nats).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
logs="${RUN_DIR:-$root/run}/logs"
files=()
if [ "$#" -gt 0 ]; then
    for name in "$@"; do files+=("$logs/$name.log"); done
else
    shopt -s nullglob
    files=("$logs"/*.log "$root"/run/cluster/logs/*.log)
    shopt -u nullglob
fi
if [ "${#files[@]}" -eq 0 ]; then
    echo "no logs yet in $logs; start the system with: just up" >&2
    exit 1
fi
exec tail -n 20 -F "${files[@]}"
