#!/usr/bin/env bash
# A Debian bookworm base image with python3 and venv, made with debootstrap, for machines that
# reach a Debian mirror but no container registry (`OFFLINE=1 make images` uses it).
# The trimmed root filesystem is cached as a tarball under ${LEPTON_CACHE_DIR:-~/.cache/lepton}:
# about a minute the first time (needs root and debootstrap), seconds afterwards.
#
#   containers/base-image.sh [IMAGE]        (default localhost/lepton-base:bookworm)
set -euo pipefail

image=${1:-localhost/lepton-base:bookworm}
engine=${CONTAINER_ENGINE:-podman}
cache=${LEPTON_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lepton}
tarball=$cache/bookworm-python3-rootfs.tar
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

fail() { echo "containers/base-image.sh: $*" >&2; exit 1; }

image_exists() {
  case $engine in
    podman) podman image exists "$image" ;;
    buildah) buildah inspect --type image "$image" >/dev/null 2>&1 ;;
    docker) docker image inspect "$image" >/dev/null 2>&1 ;;
    *) fail "unknown CONTAINER_ENGINE $engine" ;;
  esac
}

if image_exists; then
  echo "== base image $image is present"
  exit 0
fi

mkdir -p "$cache"
if [[ ! -s $tarball ]]; then
  [[ $EUID -eq 0 ]] || fail "debootstrap needs root (or build the cache $tarball as root once)"
  command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  echo "== debootstrap bookworm into $rootfs (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || fail "debootstrap failed; see $cache/debootstrap.log"
  # What a slim image leaves out: package caches and lists, manuals, translations (licences stay).
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  find "$rootfs"/usr/share/doc -type f ! -name copyright -delete
  tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi

echo "== importing $tarball as $image"
case $engine in
  podman) podman import --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null ;;
  docker) docker import --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null ;;
  buildah)
    container=$(buildah from scratch)
    buildah add --quiet "$container" "$tarball" /
    buildah config --cmd /bin/bash "$container"
    buildah commit --quiet "$container" "$image" >/dev/null
    buildah rm "$container" >/dev/null
    ;;
esac
