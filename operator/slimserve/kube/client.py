"""An API client for the process: in a pod, its ServiceAccount's token; elsewhere, KUBECONFIG (or ~/.kube/config)."""

from __future__ import annotations

from kubernetes import client, config


def load_api_client(*, connections: int | None = None) -> client.ApiClient:
    """A client of its own configuration (the library's process-wide default is left as it was).

    `connections` sizes the keep-alive pool for a process whose threads share one client; the library's
    default pool opens, and throws away, a TLS connection per concurrent request beyond it.
    """
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    if connections is not None:
        configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)
