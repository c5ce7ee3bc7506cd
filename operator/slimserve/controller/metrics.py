"""The operator's Prometheus endpoint (`slimserve operator --metrics-port`).

Besides the process and Python runtime metrics of prometheus_client, it counts handler outcomes per handler,
read from Kopf's own log records ("Handler 'x' succeeded.", "... failed temporarily: ..."), so no handler
needs to be instrumented and a failing controller shows up as a rising `outcome="failed-*"` rate.
"""

from __future__ import annotations

import errno
import logging
import re

from prometheus_client import Counter, Gauge, start_http_server

from slimserve import __version__

HANDLER_RUNS = Counter(
    "slimserve_operator_handler_runs",
    "Kopf handler runs by outcome: succeeded, failed-temporarily, failed-permanently, failed-exception.",
    ["handler", "outcome"],
)
INFO = Gauge("slimserve_operator_info", "The running operator: version and watch mode.", ["version", "mode"])

_OUTCOMES = (
    ("succeeded", re.compile(r"^Handler '(?P<handler>[^']+)' succeeded")),
    ("failed-temporarily", re.compile(r"^Handler '(?P<handler>[^']+)' failed temporarily")),
    ("failed-permanently", re.compile(r"^Handler '(?P<handler>[^']+)' failed permanently")),
    ("failed-exception", re.compile(r"^Handler '(?P<handler>[^']+)' failed with an exception")),
)


class HandlerOutcomeCounter(logging.Handler):
    """Counts Kopf's per-handler outcome log records into HANDLER_RUNS."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for outcome, pattern in _OUTCOMES:
            match = pattern.match(message)
            if match:
                HANDLER_RUNS.labels(handler=match.group("handler"), outcome=outcome).inc()
                return


def serve_metrics(port: int, *, namespaced: bool, address: str = "0.0.0.0") -> None:
    """Start the /metrics endpoint in a background thread and start counting handler outcomes.

    A port that cannot be bound ends the process with one line naming it (`SystemExit`), not a traceback from
    inside the WSGI server.
    """
    try:
        start_http_server(port, addr=address)
    except OSError as error:
        reason = "address already in use" if error.errno == errno.EADDRINUSE else error.strerror
        raise SystemExit(f"slimserve operator: cannot serve metrics on {address}:{port} (--metrics-port): "
                         f"{reason}") from None
    INFO.labels(version=__version__, mode="namespaced" if namespaced else "cluster").set(1)
    logging.getLogger("kopf").addHandler(HandlerOutcomeCounter(level=logging.INFO))
