# Two commands set everything up on a fresh machine (see README.md):
#   make demo   compress the quick-start model and serve it locally (no cluster)
#   make test   the whole test suite, against a local Kubernetes control plane built from source
PYTHON ?= .venv/bin/python
VENV := .venv
# The venv is reinstalled only when pyproject.toml changes; pip's own cache keeps that fast.
VENV_STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: venv demo test cluster-build dev-cluster

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
test: venv cluster-build
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# The binaries of the local test cluster (kube-apiserver, etcd, kwok, helm, ...), built from
# their pinned Go modules into ${SLIMSERVE_CACHE:-~/.cache/slimserve}; a no-op once built.
cluster-build:
	tests/cluster/build.sh

# Run the test cluster by hand; prints `export KUBECONFIG=...`, stops on Ctrl-C.
dev-cluster: cluster-build
	$(PYTHON) -m tests.cluster
