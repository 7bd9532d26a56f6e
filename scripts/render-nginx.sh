#!/usr/bin/env bash
# Renders nginx/nginx.conf.template to stdout: every @@NAME@@ placeholder is
# replaced (the same rendering as stack::nginx::render_nginx in Rust).
#
#   scripts/render-nginx.sh RUN_DIR WEB_ROOT PORT GATEWAY... > RUN_DIR/nginx.conf
#
# A GATEWAY is a port on 127.0.0.1, or HOST:PORT (the container image's
# gateways by service name).
# Environment: NGINX_LOG_DIR (default RUN_DIR/../logs when that exists, else RUN_DIR),
# NGINX_LISTEN_ADDR (127.0.0.1; 0.0.0.0 in the container image),
# NGINX_TEMPLATE (default nginx/nginx.conf.template of this checkout),
# NGINX_WS_CONN_LIMIT (20000), NGINX_API_RATE (200), NGINX_API_BURST (400),
# NGINX_SESSION_RATE (sessions one IP creates per minute: 30), NGINX_SESSION_BURST (30).
set -euo pipefail

if [ "$#" -lt 4 ]; then
    echo "usage: $0 RUN_DIR WEB_ROOT PORT GATEWAY_PORT..." >&2
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
template="${NGINX_TEMPLATE:-$root/nginx/nginx.conf.template}"
run_dir="$1" web_root="$2" port="$3"
shift 3
log_dir="${NGINX_LOG_DIR:-$run_dir}"

upstreams=""
for gw in "$@"; do
    case "$gw" in *:*) ;; *) gw="127.0.0.1:$gw" ;; esac
    upstreams+="        server ${gw} max_fails=0;"$'\n'
done
upstreams="${upstreams%$'\n'}"

conf="$(cat "$template")"
conf="${conf//@@LISTEN_ADDR@@/${NGINX_LISTEN_ADDR:-127.0.0.1}}"
conf="${conf//@@PORT@@/$port}"
conf="${conf//@@RUN_DIR@@/$run_dir}"
conf="${conf//@@LOG_DIR@@/$log_dir}"
conf="${conf//@@WEB_ROOT@@/$web_root}"
conf="${conf//@@UPSTREAMS@@/$upstreams}"
conf="${conf//@@WS_CONN_LIMIT@@/${NGINX_WS_CONN_LIMIT:-20000}}"
conf="${conf//@@API_RATE@@/${NGINX_API_RATE:-200}}"
conf="${conf//@@API_BURST@@/${NGINX_API_BURST:-400}}"
conf="${conf//@@SESSION_RATE@@/${NGINX_SESSION_RATE:-30}}"
conf="${conf//@@SESSION_BURST@@/${NGINX_SESSION_BURST:-30}}"
if [[ "$conf" == *@@*@@* ]]; then
    echo "render-nginx: a placeholder was left unreplaced" >&2
    exit 1
fi
printf '%s\n' "$conf"
