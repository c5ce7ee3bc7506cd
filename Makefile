# Two commands set everything up on a fresh machine (see README.md):
#   make demo   compress the quick-start model and serve it locally (no cluster)
#   make test   the whole test suite, against a local Kubernetes control plane built from source
PYTHON ?= .venv/bin/python
VENV := .venv
# The venv is reinstalled only when pyproject.toml changes; pip's own cache keeps that fast.
VENV_STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: venv demo test cluster-build dev-cluster web-deps

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	@python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "SlimServe needs Python 3.11 or newer as python3" >&2; exit 1; }
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# Compress the digits CNN, print the report, serve it over REST and gRPC until Ctrl-C.
demo: venv
	$(VENV)/bin/slimserve run -f examples/quickstart.yaml

# Everything: unit tests, the compression engine, the server, and the operator on a real control plane.
test: venv cluster-build web-deps
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# The binaries of the local test cluster (kube-apiserver, etcd, kwok, helm, ...), built from
# their pinned Go modules into ${SLIMSERVE_CACHE:-~/.cache/slimserve}; a no-op once built.
cluster-build:
	tests/cluster/build.sh

# What the browser tests (tests/web) need: the Node test project's packages, cached by lockfile hash in
# ${SLIMSERVE_CACHE:-~/.cache/slimserve}, and Debian's Chromium; a no-op once installed.
web-deps:
	tests/web/install.sh

# Run the test cluster by hand; prints `export KUBECONFIG=...`, stops on Ctrl-C.
dev-cluster: cluster-build
	$(PYTHON) -m tests.cluster

# Container images of the operator, compressor and server (CPU), and the CUDA builds of the last two
# ("<tag>-cuda"), with docker or podman: one target each of images/Dockerfile, sharing its stages.
#   make images IMAGE_REGISTRY=registry.example.com/slimserve IMAGE_TAG=0.1.0
CONTAINER_ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null || echo docker)
IMAGE_REGISTRY ?= ghcr.io/slimserve
IMAGE_TAG ?= $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' operator/slimserve/__init__.py)
TORCH_CUDA_INDEX_URL ?= https://download.pytorch.org/whl/cu128
IMAGE_BUILD_ARGS = -f images/Dockerfile --build-arg VERSION=$(IMAGE_TAG) \
	--build-arg REVISION=$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown) \
	--build-arg CREATED=$(shell date -u +%Y-%m-%dT%H:%M:%SZ)

.PHONY: images
images:
	@for image in operator compressor server; do \
	  echo "$(CONTAINER_ENGINE) build -f images/Dockerfile --target $$image -t $(IMAGE_REGISTRY)/$$image:$(IMAGE_TAG) ."; \
	  $(CONTAINER_ENGINE) build $(IMAGE_BUILD_ARGS) --target $$image -t $(IMAGE_REGISTRY)/$$image:$(IMAGE_TAG) . || exit 1; \
	done
	@for image in compressor server; do \
	  echo "$(CONTAINER_ENGINE) build -f images/Dockerfile --target $$image -t $(IMAGE_REGISTRY)/$$image:$(IMAGE_TAG)-cuda ."; \
	  $(CONTAINER_ENGINE) build $(IMAGE_BUILD_ARGS) --build-arg TORCH_INDEX_URL=$(TORCH_CUDA_INDEX_URL) \
	    --target $$image -t $(IMAGE_REGISTRY)/$$image:$(IMAGE_TAG)-cuda . || exit 1; \
	done

# Regenerate the CRDs from the API models (slimserve.api), at the top level and in the Helm chart.
.PHONY: crds
crds:
	$(PYTHON) -m slimserve.api.crd crds
	$(PYTHON) -m slimserve.api.crd charts/slimserve/crds
