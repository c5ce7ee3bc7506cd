"""Assembles the operator: settings, shared state (the memo) and the handler modules."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client

from slimserve.api import GROUP
from slimserve.controller.config import OperatorConfig, load_config
from slimserve.controller.model_service_state import Runtime as ModelServiceRuntime
from slimserve.kube.client import load_api_client

# One module per resource; importing a module registers its handlers.
HANDLER_MODULES: tuple[str, ...] = ("compression_job", "model_service", "batch_inference")


@dataclass
class OperatorMemo:
    """What every handler shares, passed as Kopf's `memo`.

    Kopf gives each object's handlers a shallow copy of it, so what is in here is shared: state made and
    started by a startup handler lives in fields made here, not in attributes set on one copy.
    """

    config: OperatorConfig
    api: client.ApiClient
    # The ModelService controller's cache, work queue and loops (started on startup, stopped on cleanup).
    model_services: ModelServiceRuntime = field(init=False)

    def __post_init__(self) -> None:
        self.model_services = ModelServiceRuntime(config=self.config, api=self.api)


# Kopf's handler threads and the controllers' own threads share one client: a connection each, kept alive
# (a smaller pool opens, and throws away, a TLS connection per request beyond it).
API_CONNECTIONS = 32




def configure_settings(settings: kopf.OperatorSettings, *, peering: str | None) -> None:
    # Our status schemas are structural, so Kopf keeps its bookkeeping in annotations, not in status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=f"kopf.{GROUP}")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=f"kopf.{GROUP}", key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    settings.execution.max_workers = 16
    if peering:
        settings.peering.name = peering
        settings.peering.mandatory = True
    else:
        settings.peering.standalone = True


def import_handlers() -> None:
    for name in HANDLER_MODULES:
        importlib.import_module(f"slimserve.controller.{name}")


def run(
    *,
    namespaces: list[str],
    liveness_endpoint: str | None,
    peering: str | None,
    config_path: str | None = None,
    log_level: str = "info",
    log_format: str = "text",
    metrics_port: int | None = None,
) -> None:
    """Run the operator until it is stopped (SIGINT/SIGTERM)."""
    import_handlers()
    memo = OperatorMemo(config=load_config(config_path), api=load_api_client(connections=API_CONNECTIONS))
    if metrics_port:
        from slimserve.controller.metrics import serve_metrics

        serve_metrics(metrics_port, namespaced=bool(namespaces))

    @kopf.on.startup()
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings, peering=peering)

    kopf.configure(
        debug=log_level == "debug",
        quiet=log_level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger().setLevel(log_level.upper())
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness_endpoint,
        memo=memo,
        standalone=peering is None,
        peering_name=peering,
    )
