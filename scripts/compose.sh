#!/usr/bin/env bash
# The compose deployment (deploy/compose.yaml) on this machine's container
# engine: podman with podman-compose (the project's engine config,
# deploy/containers.conf, via CONTAINERS_CONF), or CONTAINER_ENGINE=docker
# with `docker compose`.
#
#   scripts/compose.sh up [--scale worker=N] [--no-build]
#       builds the images (scripts/images.sh: cached base, release binaries,
#       the UI) unless --no-build, starts everything and waits until Nginx
#       answers /health on http://127.0.0.1:CHAT_HTTP_PORT (8080)
#   scripts/compose.sh down [--volumes]
#       stops (SIGTERM, 10 s grace) and removes every container and the
#       network of the project; --volumes also its volumes (JetStream
#       stores, credentials)
#   scripts/compose.sh status
#       each container with its state and health check, the NATS nodes'
#       stream leaders and replicas (scripts/cluster-status.py)
#
# Environment: COMPOSE_PROJECT (chat), CHAT_HTTP_PORT (8080), CHAT_HTTP_BIND
# (127.0.0.1; 0.0.0.0 to serve other machines), CHAT_IMAGE_TAG (latest),
# WORKER_REPLICAS (3), COMPOSE_UP_TIMEOUT_SECS (180), and every setting
# deploy/compose.yaml passes on (CHAT_*, GATEWAY_*, WORKER_*, DEMO_*, ...).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
file="$root/deploy/compose.yaml"
project="${COMPOSE_PROJECT:-chat}"
engine="${CONTAINER_ENGINE:-podman}"
port="${CHAT_HTTP_PORT:-8080}"
if [ "$engine" = podman ]; then
    export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/deploy/containers.conf}"
    compose=(podman-compose -p "$project" -f "$file")
    label="io.podman.compose.project=$project"
else
    compose=("$engine" compose -p "$project" -f "$file")
    label="com.docker.compose.project=$project"
fi

say() { echo "compose: $*"; }

# The project's containers, by label (also replicas a smaller scale no
# longer names).
containers() { "$engine" ps -a --filter "label=$label" --format '{{.Names}}' | sort; }

# The label-named service of container $1 (both engines set it).
service_of() { "$engine" inspect --format '{{index .Config.Labels "com.docker.compose.service"}}' "$1"; }

up() {
    local build=1 scale_args=()
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --no-build) build=0; shift ;;
            --scale) scale_args+=("$2"); shift 2 ;;
            --scale=*) scale_args+=("${1#--scale=}"); shift ;;
            *) echo "usage: $0 up [--scale worker=N] [--no-build]" >&2; exit 2 ;;
        esac
    done
    local extra=()
    for s in "${scale_args[@]}"; do
        case "$s" in
            worker=[0-9]*) export WORKER_REPLICAS="${s#worker=}" ;;
            *) echo "compose: only workers scale with --scale (gateways: see README, Run it in containers)" >&2; exit 2 ;;
        esac
        # podman-compose 1.0.3 ignores --scale: the file reads WORKER_REPLICAS.
        [ "$engine" != podman ] && extra+=(--scale "$s")
    done
    # Already up: say so (podman-compose 1.0.3 would keep the running
    # containers on their old images anyway).
    if [ -n "$(containers)" ]; then
        if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/health" 2>/dev/null; then
            say "$project is already up at http://127.0.0.1:$port (just compose down, then up, for new images or settings)"
            exit 0
        fi
        echo "compose: $project has containers but http://127.0.0.1:$port/health does not answer; just compose status, or down first" >&2
        exit 1
    fi
    if [ "$build" = 1 ]; then
        "$root/scripts/images.sh"
    fi
    say "starting $project (${compose[*]} up -d)"
    "${compose[@]}" up -d "${extra[@]}" >"$root/run/compose-$project.log" 2>&1 || {
        tail -n 30 "$root/run/compose-$project.log" >&2
        echo "compose: up failed (log run/compose-$project.log); 'just compose down' to clean up" >&2
        exit 1
    }
    local url="http://127.0.0.1:$port" deadline=$((SECONDS + ${COMPOSE_UP_TIMEOUT_SECS:-180}))
    until curl -fsS -o /dev/null --max-time 2 "$url/health" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            status >&2 || true
            echo "compose: $url/health did not answer in time; 'just compose down' to clean up" >&2
            exit 1
        fi
        sleep 1
    done
    say "up: $(containers | wc -l) containers"
    echo
    echo "  chat UI and API: $url"
    echo "  state: just compose status    logs: $engine logs -f <container>    stop: just compose down"
}

down() {
    local volumes=0
    case "${1:-}" in
        --volumes | -v) volumes=1 ;;
        "") ;;
        *) echo "usage: $0 down [--volumes]" >&2; exit 2 ;;
    esac
    if [ "$engine" != podman ]; then
        local flags=(--timeout 10)
        [ "$volumes" = 1 ] && flags+=(--volumes)
        "${compose[@]}" down "${flags[@]}"
        return
    fi
    mapfile -t names < <(containers)
    if [ "${#names[@]}" -gt 0 ]; then
        say "stopping ${#names[@]} containers"
        # SIGTERM first: gateways close their sockets with 1012, workers
        # hand their jobs back.
        # (Without systemd, podman reports that it has no health check
        # timers to remove: not an error of ours, hence no stderr.)
        podman stop --time 10 "${names[@]}" >/dev/null 2>&1 || true
        podman rm --force "${names[@]}" >/dev/null 2>&1 || podman rm --force "${names[@]}" >/dev/null
    fi
    mapfile -t nets < <(podman network ls --filter "label=$label" --format '{{.Name}}')
    [ "${#nets[@]}" -gt 0 ] && podman network rm "${nets[@]}" >/dev/null
    if [ "$volumes" = 1 ]; then
        mapfile -t vols < <(podman volume ls --filter "label=$label" --format '{{.Name}}')
        if [ "${#vols[@]}" -gt 0 ]; then
            podman volume rm --force "${vols[@]}" >/dev/null
            say "removed ${#vols[@]} volumes"
        fi
    fi
    say "down"
}

status() {
    mapfile -t names < <(containers)
    if [ "${#names[@]}" -eq 0 ]; then
        say "$project is not up"
        return 1
    fi
    local name state health monitors=()
    printf '%-32s %-10s %s\n' container state health
    for name in "${names[@]}"; do
        state="$("$engine" inspect --format '{{.State.Status}}' "$name")"
        health=-
        if [ "$state" = running ] && [ "$("$engine" inspect --format '{{if .Config.Healthcheck}}yes{{end}}' "$name" 2>/dev/null)" = yes ]; then
            # podman runs health checks from systemd timers, absent on
            # machines like these: run each once here.
            if [ "$engine" = podman ]; then
                podman healthcheck run "$name" >/dev/null 2>&1 && health=healthy || health=unhealthy
            else
                health="$("$engine" inspect --format '{{.State.Health.Status}}' "$name")"
            fi
        fi
        printf '%-32s %-10s %s\n' "$name" "$state" "$health"
        case "$(service_of "$name")" in
            nats-*)
                [ "$state" = running ] &&
                    monitors+=("http://$("$engine" inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name"):8222")
                ;;
        esac
    done
    if [ "${#monitors[@]}" -gt 0 ]; then
        echo
        python3 "$root/scripts/cluster-status.py" "${monitors[@]}" || true
    fi
}

case "${1:-}" in
    up) shift; mkdir -p "$root/run"; up "$@" ;;
    down) shift; down "$@" ;;
    status) status ;;
    *) echo "usage: $0 up [--scale worker=N] [--no-build] | down [--volumes] | status" >&2; exit 2 ;;
esac
