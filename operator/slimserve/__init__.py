"""SlimServe: compress PyTorch models and serve them on Kubernetes."""

__version__ = "0.1.0"
