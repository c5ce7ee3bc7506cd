"""The local Kubernetes control plane of the test suite (see controlplane.py)."""
