#!/usr/bin/env bash
# Make a local base image for machines that cannot pull one (no registry, CI): Debian bookworm
# (minbase) with python3 (3.11) and its venv module, built by debootstrap from Debian's
# packages and loaded with `docker import`. Build against it with
#   envlock build --base envlock/local-base:bookworm
# Usage: scripts/make-local-base.sh [TAG]     (idempotent: an existing TAG is kept)
set -euo pipefail
tag="${1:-envlock/local-base:bookworm}"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "local base image $tag already exists" >&2
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap not found (apt-get install debootstrap)" >&2; exit 3; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "debootstrap bookworm into $work/rootfs (about a minute)" >&2
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$work/rootfs" \
    ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 3; }
# Package caches and lists are not part of the base.
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" --numeric-owner -c . \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$tag" >/dev/null
echo "made $tag" >&2
