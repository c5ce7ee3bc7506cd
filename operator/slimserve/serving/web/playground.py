"""The playground page: static assets from `slimserve/serving/playground/`, served at `/` and `/playground/`.

The page itself talks to the model over gRPC-Web from the same origin; the server only hands it the files
and a small `config.json` (the served model's name, and sample digits for a digits model). Every asset is
read once at start-up from the package, so nothing on disk is served by path and no CDN is involved.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from functools import lru_cache
from importlib import resources

from slimserve.serving.web.grpc_web import ASGIApp, Receive, Scope, Send

PREFIX = "/playground/"
INDEX = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The page loads only its own files and calls only its own origin.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]
DIGIT_FEATURES = 64
DIGIT_CLASSES = 10


def load_assets() -> dict[str, tuple[bytes, str]]:
    """File name -> (content, content type) of every asset in the playground package folder."""
    folder = resources.files("slimserve.serving.playground")
    assets = {}
    for entry in folder.iterdir():
        content_type = CONTENT_TYPES.get("." + entry.name.rpartition(".")[2])
        if entry.is_file() and content_type:
            assets[entry.name] = (entry.read_bytes(), content_type)
    if INDEX not in assets:
        raise RuntimeError(f"the playground's {INDEX} is missing from the package")
    return assets


@lru_cache(maxsize=1)
def sample_digits() -> list[dict]:
    """The first held-out image of each class, for the page's 'pick a digit' row (values 0..16)."""
    from slimserve.models.digits import digits_data

    data = digits_data()
    samples = []
    for label in range(DIGIT_CLASSES):
        index = int((data.y_test == label).argmax())
        samples.append({"label": label, "pixels": [float(v) for v in data.x_test[index]]})
    return samples


def playground_config(model_name: str, inputs: list[dict]) -> dict:
    """What the page needs before its first call: the model's name, and sample digits for an 8x8 model."""
    digits_like = len(inputs) == 1 and inputs[0]["datatype"] == "FP32" and inputs[0]["shape"][1:] == [DIGIT_FEATURES]
    return {"model": model_name, "samples": sample_digits() if digits_like else []}


class PlaygroundMiddleware:
    """Serves the page (GET `/` and `/playground/*`); every other request goes to `app`.

    `model_metadata` returns the served model's OIP metadata, or None while it is still loading.
    """

    def __init__(self, app: ASGIApp, model_metadata: Callable[[], dict | None]) -> None:
        self.app = app
        self.model_metadata = model_metadata
        self.assets = load_assets()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or not (
            path == "/" or path.startswith(PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        name = INDEX if path == "/" else path[len(PREFIX):]
        if name == "config.json":
            metadata = self.model_metadata()
            if metadata is None:
                await _respond(send, scope, 503, b'{"error": "the model is still loading"}', "application/json")
            else:
                # The first call loads the sample digits (scikit-learn): off the event loop.
                document = await asyncio.to_thread(playground_config, metadata["name"], metadata["inputs"])
                await _respond(send, scope, 200, json.dumps(document).encode(), "application/json")
        elif name in self.assets:
            body, content_type = self.assets[name]
            await _respond(send, scope, 200, body, content_type)
        else:
            await _respond(send, scope, 404, b"not found", "text/plain; charset=utf-8")


async def _respond(send: Send, scope: Scope, status: int, body: bytes, content_type: str) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                    *SECURITY_HEADERS],
    })
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
