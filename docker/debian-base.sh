#!/usr/bin/env bash
# Make the mipflow base image from Debian's packages, for machines that cannot pull the official
# Airflow image (no Docker Hub): Debian bookworm (minbase) with Python 3.11, a virtualenv for the
# user "airflow" (uid 50000, gid 0, as in the official image) first on PATH, dumb-init and CA
# certificates. docker/Dockerfile then installs Airflow and mipflow on it as on the official image.
#
#   docker/debian-base.sh [IMAGE]        (default mipflow-base; needs root and debootstrap)
#
# Environment: CONTAINER_ENGINE (podman or docker; default: podman if present), DEBIAN_MIRROR
# (default http://deb.debian.org/debian), DEBIAN_SUITE (default bookworm).
set -euo pipefail
image="${1:-mipflow-base}"
engine="${CONTAINER_ENGINE:-$(command -v podman || command -v docker)}"
here="$(cd "$(dirname "$0")" && pwd)"
airflow_version="$(sed -n 's/^apache-airflow==//p' "$here/../requirements.txt")"
[[ -n "$airflow_version" ]] || { echo "debian-base: no apache-airflow pin in requirements.txt" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "debian-base: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }

root="$(mktemp -d /var/tmp/mipflow-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,dumb-init,ca-certificates \
    "${DEBIAN_SUITE:-bookworm}" "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
chroot "$root" useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow --shell /bin/bash airflow
chroot "$root" python3 -m venv /home/airflow/.venv
mkdir -p "$root/opt/airflow"
chroot "$root" chown -R 50000:0 /home/airflow /opt/airflow
# what an image does not need: package lists and caches, documentation, other languages' messages
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/debootstrap
tar --numeric-owner -C "$root" -c . | "$engine" import \
    --change "ENV PATH=/home/airflow/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV AIRFLOW_VERSION=$airflow_version" \
    --change "ENV AIRFLOW_HOME=/opt/airflow" \
    --change "ENV LANG=C.UTF-8" \
    --change "USER airflow" \
    --change "WORKDIR /opt/airflow" \
    --change 'CMD ["bash"]' \
    - "$image"
