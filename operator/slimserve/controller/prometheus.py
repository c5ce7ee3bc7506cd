"""Instant queries to Prometheus' HTTP API (`GET /api/v1/query`), bounded in time and size.

httpx streams the answer so that its size is checked as it arrives, as the artifact downloads do
(`artifacts.http_source`); a Prometheus client library would read whole answers with no bound. The answer is
asked uncompressed, so the bytes counted are the bytes parsed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

QUERY_TIMEOUT_S = 10.0  # the whole exchange, connecting included; Prometheus is told the same
MAX_ANSWER_BYTES = 1 << 20  # a few series by status code are a few kilobytes
_CHUNK_BYTES = 1 << 16


class PrometheusUnavailable(Exception):
    """No answer, an answer too large or too slow, or Prometheus refused the query (its error, in its words)."""


async def instant_query(address: str, promql: str, *, timeout_s: float = QUERY_TIMEOUT_S,
                        max_bytes: int = MAX_ANSWER_BYTES) -> list[dict[str, Any]]:
    """The instant vector `promql` evaluates to now: Prometheus' `data.result`."""
    url = f"{address.rstrip('/')}/api/v1/query"
    params = {"query": promql, "timeout": f"{timeout_s:g}s"}
    try:
        async with asyncio.timeout(timeout_s):
            async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
                async with client.stream("GET", url, params=params, headers={"Accept-Encoding": "identity"}) as answer:
                    body = await _read_bounded(answer, max_bytes)
                    status = answer.status_code
    except TimeoutError:
        raise PrometheusUnavailable(f"no answer within {timeout_s:g}s") from None
    except httpx.HTTPError as exc:
        raise PrometheusUnavailable(f"{type(exc).__name__}: {exc}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise PrometheusUnavailable(f"HTTP {status}, not a JSON answer: {body[:200]!r}") from None
    if not isinstance(document, dict):
        raise PrometheusUnavailable(f"HTTP {status}, an answer that is not an object")
    if document.get("status") != "success":
        raise PrometheusUnavailable(f"HTTP {status}: {document.get('errorType', 'error')}: {document.get('error', '')}")
    data = document.get("data") or {}
    if data.get("resultType") != "vector":
        raise PrometheusUnavailable(f"expected an instant vector, got {data.get('resultType')!r}")
    return data.get("result") or []


async def _read_bounded(answer: httpx.Response, max_bytes: int) -> bytes:
    encoding = answer.headers.get("Content-Encoding", "identity").lower()
    if encoding != "identity":
        raise PrometheusUnavailable(f"an answer encoded {encoding!r}, asked for identity")
    declared = answer.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PrometheusUnavailable(f"an answer of {declared} bytes, more than the limit of {max_bytes}")
    body = bytearray()
    async for chunk in answer.aiter_raw(_CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise PrometheusUnavailable(f"an answer of more than {max_bytes} bytes")
    return bytes(body)
