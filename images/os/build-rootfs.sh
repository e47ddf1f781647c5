#!/usr/bin/env bash
# Build the OS layer of every nlpjobs image without pulling from any registry: a minimal Debian
# bookworm root filesystem (Python 3.11, venv, CA certificates, tini, tcmalloc) made by mmdebstrap from
# the Debian archive, imported as a Docker image.
#   images/os/build-rootfs.sh [IMAGE]        default IMAGE: nlpjobs-os:bookworm
# Needs: mmdebstrap (apt-get install mmdebstrap) and a running Docker daemon. Users who can pull from
# a registry may skip this and pass BASE_IMAGE=python:3.11-slim-bookworm to `make images` instead.
set -euo pipefail
image="${1:-nlpjobs-os:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
docker=(docker ${DOCKER_HOST:+-H "$DOCKER_HOST"})
packages=(python3 python3-venv ca-certificates tini libtcmalloc-minimal4)
if "${docker[@]}" image inspect "$image" >/dev/null 2>&1; then
  if "${docker[@]}" run --rm "$image" dpkg-query -W "${packages[@]}" >/dev/null 2>&1; then
    echo "$image exists"; exit 0
  fi
  echo "$image exists but lacks some of ${packages[*]} (built by an older version): building it again"
fi
command -v mmdebstrap >/dev/null || { echo "mmdebstrap not found: apt-get install -y mmdebstrap" >&2; exit 1; }
# --variant=minbase keeps only Essential + apt; docs, man pages and locales are dropped.
mmdebstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
  bookworm - "$mirror" | "${docker[@]}" import -c 'ENV LANG=C.UTF-8' - "$image"
echo "built $image"
