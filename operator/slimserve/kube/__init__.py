"""Kubernetes plumbing that both sides of SlimServe use: the operator and the compression pod.

- `client.load_api_client()`: an API client from the pod's ServiceAccount, else the kubeconfig;
- `status.update_status(...)` / `status.patch_status(...)`: writing a custom resource's status subresource,
  with the resourceVersion it was computed from where it has more than one writer.
"""
