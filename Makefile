# Every entry point a person types. `make test` and `make run` install first when needed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= infer,train,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install kserve-client test test-fast lint format run bench images deploy clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes; a fresh machine needs nothing but Python 3.11.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	@touch $@

# KServe's own client, for the drop-in tests against it (tests/lepton_runtime/inference/
# test_clients.py): it comes with the whole kserve package, so it lives in the virtualenv the
# bench's KServe peer uses (~/.cache/lepton-bench/peers/kserve; bench/peers.py), not in .venv.
kserve-client: install
	$(BIN)/python bench/peers.py kserve

test: install kserve-client
	$(BIN)/python -m pytest

# Everything but the slow end-to-end tests.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check shared functions tests bench
	$(BIN)/ruff format --check shared functions tests bench

format: install
	$(BIN)/ruff check --fix shared functions tests bench
	$(BIN)/ruff format shared functions tests bench

# The local stack serves the same overlay `make deploy` applies (OVERLAY=minio by default).
run: install
	$(BIN)/lepton up --overlay $(OVERLAY)

# Benchmarks against the seed design and the framework ceiling (needs wrk; installed from
# Debian when missing and this runs as root). Writes docs/benchmarks.md.
bench: install
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get install -y -q wrk >/dev/null \
		|| (apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null)); } \
		|| { echo "make bench needs wrk (Debian/Ubuntu: apt-get install wrk)" >&2; exit 1; }
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .lepton .pytest_cache build *.egg-info

# Function images, built from the repo root with podman, buildah or docker, whichever works here
# (containers/build.sh). OFFLINE=1 needs no registry: a debootstrap base image and wheels
# resolved on this machine. TRAIN_EXTRA=train-gpu builds the training image with CUDA.
CONTAINER_ENGINE ?=
IMAGE_REPO ?= dev.local/lepton
IMAGE_TAG ?=
TRAIN_EXTRA ?= train
BASE_IMAGE ?=
OFFLINE ?= 0

images:
	CONTAINER_ENGINE='$(CONTAINER_ENGINE)' IMAGE_REPO='$(IMAGE_REPO)' IMAGE_TAG='$(IMAGE_TAG)' \
	TRAIN_EXTRA='$(TRAIN_EXTRA)' BASE_IMAGE='$(BASE_IMAGE)' OFFLINE='$(OFFLINE)' \
	containers/build.sh all

# Knative Serving + Eventing objects into the current kubectl context and namespace.
# OVERLAY=minio (default: MinIO webhooks -> the project's adapter) or aws (S3 -> SQS ->
# IntegrationSource). Prerequisites (Secrets, buckets, notifications): knative/README.md.
OVERLAY ?= minio
KUBECTL ?= kubectl

deploy:
	@test -f knative/overlays/$(OVERLAY)/kustomization.yaml \
		|| { echo "no overlay knative/overlays/$(OVERLAY) (aws or minio)" >&2; exit 1; }
	$(KUBECTL) apply -k knative/overlays/$(OVERLAY)
