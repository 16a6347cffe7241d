#!/usr/bin/env bash
# Build the function images from the repo root; `make images` runs this.
#
#   containers/build.sh [infer|train|all]      (default: all)
#
# Environment (the Makefile passes its variables of the same names):
#   CONTAINER_ENGINE  podman, buildah or docker; default: the first one that works here
#   IMAGE_REPO        image name prefix, default dev.local/lepton (Knative does not try to resolve
#                     dev.local tags in a registry, so images loaded into kind/minikube just work)
#   IMAGE_TAG         default: the project version in pyproject.toml
#   TRAIN_EXTRA       train (tensorflow-cpu, default) or train-gpu (tensorflow[and-cuda])
#   BASE_IMAGE        a Debian bookworm image with python3 and venv;
#                     default docker.io/library/python:3.11-slim-bookworm
#   OFFLINE=1         build without any registry or index: the base image is made with debootstrap
#                     (containers/base-image.sh, cached) unless BASE_IMAGE is set, and every wheel
#                     is resolved on this machine first into build/wheelhouse/<image> (needs
#                     Python 3.11 here, as in the image); the build then runs pip --no-index.
set -euo pipefail
cd "$(dirname "$0")/.."

roles=("${1:-all}")
[[ ${roles[0]} == all ]] && roles=(infer train)

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
IMAGE_REPO=${IMAGE_REPO:-dev.local/lepton}
IMAGE_TAG=${IMAGE_TAG:-${version:-latest}}
TRAIN_EXTRA=${TRAIN_EXTRA:-train}
OFFLINE=${OFFLINE:-0}
LOCAL_BASE=localhost/lepton-base:bookworm

fail() { echo "containers/build.sh: $*" >&2; exit 1; }

engine_works() {
  case $1 in
    podman) podman info >/dev/null 2>&1 ;;
    buildah) buildah info >/dev/null 2>&1 ;;
    docker) docker info >/dev/null 2>&1 ;;  # a docker client without a reachable daemon is no engine
    *) return 1 ;;
  esac
}

if [[ -z ${CONTAINER_ENGINE:-} ]]; then
  for candidate in podman buildah docker; do
    if command -v "$candidate" >/dev/null && engine_works "$candidate"; then
      CONTAINER_ENGINE=$candidate
      break
    fi
  done
fi
if [[ -z ${CONTAINER_ENGINE:-} ]]; then
  hint=""
  command -v docker >/dev/null && hint=" (a docker client is installed, but no Docker daemon answers)"
  fail "no container engine found${hint}. Install podman and buildah (Debian/Ubuntu as root:
  .ci/install-container-tools.sh) or start Docker, or set CONTAINER_ENGINE."
fi
engine_works "$CONTAINER_ENGINE" || fail "$CONTAINER_ENGINE is installed but does not work here"

if [[ $OFFLINE == 1 && -z ${BASE_IMAGE:-} ]]; then
  BASE_IMAGE=$LOCAL_BASE
  CONTAINER_ENGINE=$CONTAINER_ENGINE containers/base-image.sh "$BASE_IMAGE"
fi
BASE_IMAGE=${BASE_IMAGE:-docker.io/library/python:3.11-slim-bookworm}

extra_for() { [[ $1 == train ]] && echo "$TRAIN_EXTRA" || echo "$1"; }

# The wheelhouse is part of the build context; an empty one means "use the index".
prepare_wheelhouse() {
  local role=$1 extra=$2 dir=build/wheelhouse/$1
  rm -rf "$dir" && mkdir -p "$dir"
  [[ $OFFLINE == 1 ]] || return 0
  local python=${PYTHON:-}
  [[ -z $python && -x .venv/bin/python ]] && python=.venv/bin/python
  python=${python:-python3}
  "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || fail "OFFLINE=1 resolves wheels with this machine's Python, which must be 3.11 like the image's"
  echo "== wheels for $role ($extra) into $dir"
  # setuptools and wheel: the image builds the project wheel with them, without an index.
  "$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$dir" \
    ".[$extra]" "setuptools>=69" wheel
  rm -f "$dir"/lepton_functions-*.whl  # the image builds its own from the same sources
}

build() {
  local role=$1 extra tag
  extra=$(extra_for "$role")
  tag=$IMAGE_REPO/$role:$IMAGE_TAG
  prepare_wheelhouse "$role" "$extra"
  local args=(-f "containers/$role.Containerfile" -t "$tag"
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "PIP_OFFLINE=$OFFLINE")
  [[ $role == train ]] && args+=(--build-arg "TRAIN_EXTRA=$TRAIN_EXTRA")
  echo "== $CONTAINER_ENGINE: building $tag from $BASE_IMAGE"
  local started=$SECONDS
  case $CONTAINER_ENGINE in
    podman) podman build --layers "${args[@]}" . ;;
    buildah) buildah bud --layers "${args[@]}" . ;;
    docker) DOCKER_BUILDKIT=1 docker build "${args[@]}" . ;;
    *) fail "unknown CONTAINER_ENGINE $CONTAINER_ENGINE" ;;
  esac
  echo "== built $tag in $((SECONDS - started)) s"
}

for role in "${roles[@]}"; do
  case $role in
    infer | train) build "$role" ;;
    *) fail "unknown image $role (infer, train or all)" ;;
  esac
done
