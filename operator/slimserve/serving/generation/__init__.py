"""Text generation for decoder models: a continuous-batching engine and its HTTP routes.

- `engine`: the scheduler on a worker thread: sequences join and leave the running batch between decode
  steps, each in a KV cache slot; requests wait in a bounded queue, never past the cache's memory bound;
- `sampling`: greedy and sampled decoding (temperature, top-k, top-p, a seed per request);
- `text`: incremental detokenization and stop sequences;
- `openai_api` / `oip_generate`: the OpenAI-compatible /v1 routes and the OIP generate extension, over `sse`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slimserve.serving.dataplane import DataPlane
    from slimserve.serving.generation.service import Generation
    from slimserve.serving.rest import RestApp


def add_generation_routes(app: "RestApp", dataplane: "DataPlane", generation: "Generation") -> None:
    """The OpenAI-compatible /v1 routes and the OIP generate extension, on the REST app."""
    from slimserve.serving.generation.oip_generate import add_generate_routes
    from slimserve.serving.generation.openai_api import add_openai_routes

    add_openai_routes(app, dataplane, generation)
    add_generate_routes(app, dataplane, generation)
