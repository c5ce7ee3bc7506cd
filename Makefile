# Two commands set everything up on a fresh machine (see README.md):
#   make demo   compress the quick-start model and serve it locally (no cluster)
#   make test   the whole test suite, against a local Kubernetes control plane built from source
PYTHON ?= .venv/bin/python
VENV := .venv
# The venv is reinstalled only when pyproject.toml changes; pip's own cache keeps that fast.
VENV_STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
PYTEST_ARGS ?=
# make test's pytest-xdist workers, each with its own control plane and operator (0: one process, no workers).
# Three on two cores: much of the suite waits on pods and the API server, and the third fills that time.
PYTEST_WORKERS ?= 3

.PHONY: venv demo test cluster-build dev-cluster web-deps node-deps container-deps metrics-server autoscaling-build

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
test: venv cluster-build web-deps node-deps container-deps metrics-server
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The binaries of the local test cluster (kube-apiserver, etcd, kwok, helm, ...), built from
# their pinned Go modules into ${SLIMSERVE_CACHE:-~/.cache/slimserve}; a no-op once built.
cluster-build:
	tests/cluster/build.sh

# What the browser tests (tests/web) need: the Node test project's packages, cached by lockfile hash in
# ${SLIMSERVE_CACHE:-~/.cache/slimserve}, and Debian's Chromium; a no-op once installed.
web-deps:
	tests/web/install.sh

# What the real node of the test cluster (tests/realnode) runs on: Debian's containerd, runc, CNI plugins,
# conntrack and iptables; a no-op once installed.
node-deps:
	tests/realnode/install.sh

# What the container tests (tests/containers) build and run the images with: Debian's podman, and mmdebstrap for
# the local base image; a no-op once installed.
container-deps:
	tests/containers/install.sh

# metrics-server, which the HorizontalPodAutoscaler on the real node reads (tests/autoscaling), built from its
# pinned Go module into $(SLIMSERVE_CACHE); a no-op once built.
metrics-server:
	tests/autoscaling/build.sh metrics-server

# Everything autoscaling on the real node runs beside it: metrics-server, KEDA and the KEDA HTTP add-on; a no-op
# once built. Not a step of `make test`: KEDA's operator alone takes most of an hour to build cold on two cores,
# more than CI's time allows beside the rest. The scale-from-zero and KEDA Prometheus-trigger tests run where
# they are built, and skip, saying so, where they are not.
autoscaling-build:
	tests/autoscaling/build.sh

# The benchmarks this machine can run (serving against KServe with native load generators, gRPC-Web, a decoder's
# streamed generation, compression), one JSON file per run in $(SLIMSERVE_CACHE)/bench/ and a Markdown report with
# plots beside it. ghz, h2load and perf_analyzer come from benchmarks/tools.sh; KServe's venv is made on first
# use. QUICK=1: a short smoke run.
.PHONY: bench bench-tools
bench: venv bench-tools
	SLIMSERVE_CACHE=$(SLIMSERVE_CACHE) QUICK=$(QUICK) $(PYTHON) benchmarks/run_all.py

bench-tools:
	SLIMSERVE_CACHE=$(SLIMSERVE_CACHE) benchmarks/tools.sh

# Run the test cluster by hand; prints `export KUBECONFIG=...`, stops on Ctrl-C.
dev-cluster: cluster-build
	$(PYTHON) -m tests.cluster

# Container images of the operator, compressor and server (CPU), and the CUDA builds of the last two
# ("<tag>-cuda"), with docker or podman: one target each of images/Dockerfile, sharing its stages, each
# installing its part of images/requirements.lock with --require-hashes.
#   make images IMAGE_REGISTRY=registry.example.com/slimserve IMAGE_TAG=0.1.0
# BASE=local: for a machine that reaches PyPI and Debian's archive but no container registry. The base is
# Debian bookworm's Python made with mmdebstrap (images/local-base.sh, kept in $(SLIMSERVE_CACHE)/images),
# torch is PyPI's locked build (CUDA: larger than the PyTorch index's CPU build) and only the CPU targets are
# built.
# Each image is also tagged `content-<hash of what goes into it>` (images/build.sh), and a target whose content
# tag the engine already holds is not built again: a warm `make images` takes seconds. IMAGES picks targets.
#   make images IMAGES="compressor server"    (prints the content-tagged references, one a line)
IMAGES ?= operator compressor server
CONTAINER_ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null || echo docker)
IMAGE_REGISTRY ?= ghcr.io/slimserve
IMAGE_TAG ?= $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' operator/slimserve/__init__.py)
TORCH_CUDA_INDEX_URL ?= https://download.pytorch.org/whl/cu128
SLIMSERVE_CACHE ?= $(HOME)/.cache/slimserve
BASE ?= official
LOCAL_BASE_IMAGE := localhost/slimserve/python:3.11-bookworm-$(shell sha256sum images/local-base.sh | cut -c1-12)
IMAGE_BUILD_ARGS = -f images/Dockerfile --build-arg VERSION=$(IMAGE_TAG) \
	--build-arg REVISION=$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown) \
	--build-arg CREATED=$(shell TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo unknown)
ifeq ($(BASE),local)
IMAGE_BUILD_ARGS += --build-arg PYTHON_IMAGE=$(LOCAL_BASE_IMAGE) --build-arg TORCH_INDEX_URL=
endif
ifneq ($(findstring podman,$(notdir $(CONTAINER_ENGINE))),)
# podman: a container may not raise its limits above the host's hard ones (podman's defaults do; runc was
# refused nproc even at 2/3 of the host's, so 32768 at most). The builds trust the host's CA bundle (a TLS proxy's
# CA), and their cache mounts (the wheelhouse) live in $(SLIMSERVE_CACHE)/podman/buildah-cache: buildah keeps
# them under TMPDIR. docker keeps them in its own build cache.
HOST_CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
HOST_NOFILE := $(shell bash -c 'ulimit -Hn')
HOST_NPROC := $(shell bash -c 'n=$$(ulimit -Hu); [ "$$n" = unlimited ] || [ "$$n" -gt 32768 ] && n=32768; echo $$n')
IMAGE_RUN_ARGS := --ulimit nofile=$(HOST_NOFILE):$(HOST_NOFILE) --ulimit nproc=$(HOST_NPROC):$(HOST_NPROC)
# --format docker: OCI images have no HEALTHCHECK, and podman would drop it.
IMAGE_BUILD_ARGS += $(IMAGE_RUN_ARGS) --format docker \
	$(if $(HOST_CA_BUNDLE),--volume $(HOST_CA_BUNDLE):/etc/ssl/certs/ca-certificates.crt:ro)
IMAGE_BUILD_ENV := TMPDIR=$(SLIMSERVE_CACHE)/podman
endif

.PHONY: images images-base images-check
images: $(if $(filter local,$(BASE)),images-base)
	@mkdir -p $(SLIMSERVE_CACHE)/podman
	@for image in $(IMAGES); do \
	  $(IMAGE_BUILD_ENV) images/build.sh $(CONTAINER_ENGINE) $(IMAGE_REGISTRY)/$$image $(IMAGE_TAG) \
	    $(IMAGE_BUILD_ARGS) --target $$image || exit 1; \
	done
ifneq ($(BASE),local)
	@for image in $(filter compressor server,$(IMAGES)); do \
	  $(IMAGE_BUILD_ENV) images/build.sh $(CONTAINER_ENGINE) $(IMAGE_REGISTRY)/$$image $(IMAGE_TAG)-cuda \
	    $(IMAGE_BUILD_ARGS) --build-arg TORCH_INDEX_URL=$(TORCH_CUDA_INDEX_URL) --target $$image || exit 1; \
	done
endif

# Run the built CPU images read-only as user 65532: each --help, and the server answering /v2/health/ready on
# 127.0.0.1 until SIGTERM (images/check.sh).
images-check:
	images/check.sh $(CONTAINER_ENGINE) $(IMAGE_REGISTRY) $(IMAGE_TAG) $(IMAGE_RUN_ARGS)

images-base:
	SLIMSERVE_CACHE=$(SLIMSERVE_CACHE) images/local-base.sh $(CONTAINER_ENGINE) $(LOCAL_BASE_IMAGE)

# Re-resolve images/requirements.lock (every dependency and the test extra, pinned with hashes, for Linux
# x86_64 and Python 3.11) after a change of pyproject.toml's dependencies, with uv in $(SLIMSERVE_CACHE)/tools.
UV_VERSION := 0.13.9
UV := $(SLIMSERVE_CACHE)/tools/uv-$(UV_VERSION)/bin/uv
.PHONY: lock
lock: $(UV)
	$(UV) pip compile pyproject.toml images/pip.in --extra test --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" --quiet -o images/requirements.lock

$(UV):
	python3 -m venv $(SLIMSERVE_CACHE)/tools/uv-$(UV_VERSION)
	$(SLIMSERVE_CACHE)/tools/uv-$(UV_VERSION)/bin/python -m pip install --quiet uv==$(UV_VERSION)

# Regenerate the CRDs from the API models (slimserve.api), at the top level and in the Helm chart.
.PHONY: crds
crds:
	$(PYTHON) -m slimserve.api.crd crds
	$(PYTHON) -m slimserve.api.crd charts/slimserve/crds
