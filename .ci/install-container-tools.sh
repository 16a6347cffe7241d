#!/usr/bin/env bash
# Installs what `make images` and the image tests need on a Debian/Ubuntu machine, as root:
# podman, buildah, runc and debootstrap, and a containers.conf drop-in for hosts like the CI one
# (crun fails on its cgroup layout; the default ulimits are above what a container may set
# there). Also checks for kubectl or kustomize, which the manifest tests need.
# Idempotent. Without root or apt-get it says what is missing and exits 0: the image tests then
# skip with their reason instead of CI failing here.
set -euo pipefail

say() { echo "install-container-tools: $*" >&2; }

missing=()
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ! command -v kubectl >/dev/null && ! command -v kustomize >/dev/null; then
  missing+=(kubectl)
fi

if ((${#missing[@]})); then
  if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
    say "missing ${missing[*]}; run this as root on Debian/Ubuntu to install them"
    exit 0
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  packages=()
  for tool in "${missing[@]}"; do
    # kubectl is only in Kubernetes' or Google Cloud's apt repositories: try, do not insist.
    [[ $tool == kubectl ]] || packages+=("$tool")
  done
  ((${#packages[@]})) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" kubectl "* ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl >/dev/null 2>&1 \
      || say "kubectl is not in the configured apt repositories; install kubectl or kustomize"
  fi
fi

dropin=/etc/containers/containers.conf.d/50-lepton.conf
if command -v podman >/dev/null && [[ $EUID -eq 0 && ! -e $dropin ]]; then
  mkdir -p "$(dirname "$dropin")"
  cat >"$dropin" <<'CONF'
# Written by lepton-functions' .ci/install-container-tools.sh.
[containers]
# The engine's defaults are above the limits a container may set on this host.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
# crun fails on this host's cgroup layout; runc works.
runtime = "runc"
CONF
  say "wrote $dropin"
fi

if command -v podman >/dev/null && ! podman info >/dev/null 2>&1; then
  say "podman is installed but does not work here: $(podman info 2>&1 | tail -n1)"
fi
exit 0
