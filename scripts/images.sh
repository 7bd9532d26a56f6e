#!/usr/bin/env bash
# Builds the container images of the compose deployment (deploy/compose.yaml)
# with no image registry: two Debian bookworm bases made from packages
# (`mmdebstrap --variant=minbase`, imported once and then reused while their
# package list is unchanged), and on them the images
#
#   localhost/chat-gateway:TAG   gateway          localhost/chat-worker:TAG   worker
#   localhost/chat-chatctl:TAG   chatctl          localhost/chat-nats:TAG     nats-server (pinned PyPI wheel)
#   localhost/chat-nginx:TAG     Nginx (Debian's nginx-light, our template, the built UI)
#
# each running as the unprivileged user `chat` (uid 10001); no credential is
# in any of them (the compose deployment mounts them).
#
#   scripts/images.sh            then: scripts/compose.sh up
#
# Environment: CHAT_IMAGE_TAG (latest), CONTAINER_ENGINE (podman; docker
# works too), BUILD_PROFILE (release) or CHAT_BIN_DIR (where gateway,
# worker and chatctl are), SKIP_BUILD=1 (use the binaries already built),
# SKIP_WEB_BUILD=1 (use web/dist as it is; without it the image serves no UI).
# With podman, CONTAINERS_CONF defaults to deploy/containers.conf.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
engine="${CONTAINER_ENGINE:-podman}"
tag="${CHAT_IMAGE_TAG:-latest}"
profile="${BUILD_PROFILE:-release}"
bin_dir="${CHAT_BIN_DIR:-$root/target/$profile}"
stage="$root/run/images"
if [ "$engine" = podman ]; then
    export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/deploy/containers.conf}"
fi

say() { echo "images: $*"; }

image_exists() {
    if [ "$engine" = podman ]; then
        podman image exists "$1"
    else
        "$engine" image inspect "$1" >/dev/null 2>&1
    fi
}

# The base: Debian's own packages (minbase and the CA roots), security
# updates included, /usr merged by mmdebstrap's hook (the usrmerge package
# would bring Perl along). The user `chat` is added here so every image
# runs as the same unprivileged uid (the volumes they share are its).
mirrors=(
    "deb http://deb.debian.org/debian bookworm main"
    "deb http://deb.debian.org/debian bookworm-updates main"
    "deb http://deb.debian.org/debian-security bookworm-security main"
)
merged_usr=/usr/share/mmdebstrap/hooks/merged-usr
add_user='echo "chat:x:10001:10001:chat:/nonexistent:/usr/sbin/nologin" >>"$1/etc/passwd"; echo "chat:x:10001:" >>"$1/etc/group"'
base_packages=ca-certificates
# Prints the base image's name, making it first when no image of this
# package list exists.
ensure_base() {
    local key image tmp started=$SECONDS
    key="$(printf '%s\n' "$base_packages" "${mirrors[@]}" "$add_user" merged-usr | sha256sum | cut -c1-12)"
    image="localhost/chat-base:bookworm-$key"
    if image_exists "$image"; then
        say "$image (cached)" >&2
        echo "$image"
        return
    fi
    command -v mmdebstrap >/dev/null && [ -d "$merged_usr" ] || {
        echo "images: mmdebstrap is missing: scripts/install-deps.sh --containers" >&2
        exit 1
    }
    tmp="$(mktemp -d)"
    say "mmdebstrap the base (minbase, $base_packages); once per package list" >&2
    if ! mmdebstrap --quiet --variant=minbase --include="$base_packages" --hook-dir="$merged_usr" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook="$add_user" \
        bookworm "$tmp/rootfs.tar" "${mirrors[@]}" >&2; then
        rm -rf "$tmp"
        echo "images: mmdebstrap failed" >&2
        exit 1
    fi
    "$engine" import --change 'CMD ["/bin/bash"]' "$tmp/rootfs.tar" "$image" >/dev/null
    rm -rf "$tmp"
    say "$image made in $((SECONDS - started)) s" >&2
    echo "$image"
}

# Nginx's base: the base and Debian's nginx-light, also cached by content.
ensure_nginx_base() {
    local base="$1" key image started=$SECONDS
    key="$(cat "$root/deploy/images/nginx-base.Containerfile" | { cat; echo "$base"; } | sha256sum | cut -c1-12)"
    image="localhost/chat-nginx-base:bookworm-$key"
    if image_exists "$image"; then
        say "$image (cached)" >&2
    else
        say "apt-get install nginx-light on the base; once" >&2
        "$engine" build "${format[@]}" --quiet --build-arg "BASE=$base" --tag "$image" \
            --file "$root/deploy/images/nginx-base.Containerfile" "$root/deploy/images" >/dev/null
        say "$image made in $((SECONDS - started)) s" >&2
    fi
    echo "$image"
}

format=()
# podman writes OCI images by default, which have no HEALTHCHECK.
[ "$engine" = podman ] && format=(--format docker)

command -v "$engine" >/dev/null || {
    echo "images: $engine is missing: scripts/install-deps.sh --containers" >&2
    exit 1
}

# The binaries, built as `just up` builds them.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    flag=()
    [ "$profile" = release ] && flag=(--release)
    say "cargo build ${flag[*]} -p gateway -p worker -p chatctl"
    (cd "$root" && cargo build "${flag[@]}" -p gateway -p worker -p chatctl)
fi
for b in gateway worker chatctl; do
    [ -x "$bin_dir/$b" ] || {
        echo "images: $bin_dir/$b is missing (build failed, or SKIP_BUILD=1 without a build)" >&2
        exit 1
    }
done
nats_bin="$(NATS_SERVER_BIN="${NATS_SERVER_BIN:-}" "$root/scripts/nats-server-path.sh")"
if [ -f "$root/web/package.json" ] && [ "${SKIP_WEB_BUILD:-0}" != 1 ]; then
    say "building the web UI (npm ci && npm run build in web/)"
    (cd "$root/web" && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)
fi

base="$(ensure_base)"
nginx_base="$(ensure_nginx_base "$base")"

# Each image's build context holds only its own files (hard links where
# possible: no copy of the binaries).
rm -rf "$stage"
mkdir -p "$stage"
put() {
    local image="$1"
    shift
    mkdir -p "$stage/$image"
    for f in "$@"; do
        cp -lR "$f" "$stage/$image/" 2>/dev/null || cp -R "$f" "$stage/$image/"
    done
}
images="$root/deploy/images"
put gateway "$bin_dir/gateway" "$images/http-ok"
put worker "$bin_dir/worker" "$images/worker-entrypoint" "$images/http-ok"
put chatctl "$bin_dir/chatctl"
put nats "$nats_bin" "$images/http-ok"
put nginx "$root/nginx/nginx.conf.template" "$root/scripts/render-nginx.sh" \
    "$images/nginx-entrypoint" "$images/http-ok"
if [ -d "$root/web/dist" ]; then
    cp -R "$root/web/dist" "$stage/nginx/web"
else
    say "note: web/dist is not built; the nginx image serves no UI"
    mkdir -p "$stage/nginx/web"
fi

for image in gateway worker chatctl nats nginx; do
    from="$base"
    [ "$image" = nginx ] && from="$nginx_base"
    say "localhost/chat-$image:$tag"
    "$engine" build "${format[@]}" --quiet --build-arg "BASE=$from" --tag "localhost/chat-$image:$tag" \
        --file "$images/$image.Containerfile" "$stage/$image" >/dev/null
done
rm -rf "$stage"

"$engine" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' |
    grep -E "^localhost/chat-[a-z]+:$tag " | sed 's/^/images: /'
