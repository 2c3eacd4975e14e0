#!/usr/bin/env bash
# Build the mipflow images (`make images`): mipflow-node and mipflow-central, tagged
# ${MIPFLOW_VERSION:-dev}, with podman or docker, whichever runs here (podman first).
#
# Base image (build argument AIRFLOW_IMAGE of docker/Dockerfile):
#   MIPFLOW_BASE_IMAGE=IMAGE   use IMAGE as it is
#   otherwise                  the official apache/airflow image when it is present or can be pulled,
#                              else mipflow-base, made once from Debian's packages by
#                              docker/debian-base.sh (needs root and debootstrap) and kept for later builds
# The build talks to PyPI from the host's network (--network host) and hands pip the host's CA
# bundle as a build secret (PIP_CA_BUNDLE, default /etc/ssl/certs/ca-certificates.crt) when it exists.
# Prints the time each step took and the images' sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
here="$PWD/docker"

engine="${CONTAINER_ENGINE:-}"
if [[ -z "$engine" ]]; then
    for candidate in podman docker; do
        if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then
            engine="$candidate"; break
        fi
    done
fi
[[ -n "$engine" ]] || { echo "build-images: neither podman nor docker can run here" >&2; exit 1; }
if [[ "$(basename "$engine")" == podman && -z "${CONTAINERS_CONF:-}" ]]; then
    export CONTAINERS_CONF="$here/podman/containers.conf"  # runc, no default ulimits (see that file)
fi
export CONTAINER_ENGINE="$engine"

version="${MIPFLOW_VERSION:-dev}"
official="apache/airflow:$(sed -n 's/^apache-airflow==//p' requirements.txt)-python3.11"
seconds() { echo "$SECONDS"; }
took() { printf 'build-images: %-28s %5d s\n' "$1" "$((SECONDS - $2))"; }

base="${MIPFLOW_BASE_IMAGE:-}"
if [[ -z "$base" ]]; then
    if "$engine" image inspect "$official" >/dev/null 2>&1 || "$engine" pull -q "$official" >/dev/null 2>&1; then
        base="$official"
    else
        base="mipflow-base"
        if ! "$engine" image inspect "$base" >/dev/null 2>&1; then
            start="$(seconds)"
            echo "build-images: $official cannot be pulled; making $base from Debian's packages" >&2
            bash "$here/debian-base.sh" "$base"
            took "$base (debootstrap)" "$start"
        fi
    fi
fi

args=(build --network host -f docker/Dockerfile --build-arg "AIRFLOW_IMAGE=$base")
ca="${PIP_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[[ -s "$ca" ]] && args+=(--secret "id=pip_ca,src=$ca")
if [[ "$(basename "$engine")" == docker ]]; then
    export DOCKER_BUILDKIT=1  # RUN --mount=type=secret
fi
for target in node central; do
    start="$(seconds)"
    "$engine" "${args[@]}" --target "$target" -t "mipflow-$target:$version" .
    took "mipflow-$target:$version" "$start"
done
echo "build-images: base $base"
"$engine" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "mipflow-(node|central):$version |mipflow-base" || true
