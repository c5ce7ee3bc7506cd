"""The inference server (`slimserve.serving.server.serve`, what `slimserve serve` runs) over a model whose
calls wait while a hold file exists: a test holds exactly as many requests in flight as it sends.

Usage: python -m tests.prometheus.gated_server HOLD_FILE HTTP_PORT GRPC_PORT
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import numpy as np

from slimserve.models.servable import ModelInfo, TensorSpec
from slimserve.serving.config import ServerConfig
from slimserve.serving.model import ServedModel
from slimserve.serving.server import serve

MODEL_NAME = "gated"
INPUT = TensorSpec("x", "FP32", (-1, 4))
OUTPUT = TensorSpec("y", "FP32", (-1, 4))


class GatedModel:
    """y = x, after a millisecond of CPU (so the server runs it on its model thread, never on the event
    loop that answers /metrics) and after the hold file is gone."""

    info = ModelInfo(name=MODEL_NAME, version="1", inputs=(INPUT,), outputs=(OUTPUT,))

    def __init__(self, hold: Path) -> None:
        self.hold = hold

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        busy_until = time.thread_time() + 0.001
        while time.thread_time() < busy_until:
            pass
        while self.hold.exists():
            time.sleep(0.01)
        return {OUTPUT.name: inputs[INPUT.name]}


def main(hold: str, http_port: str, grpc_port: str) -> int:
    config = ServerConfig(artifact=f"object://{MODEL_NAME}", host="127.0.0.1", http_port=int(http_port),
                          grpc_port=int(grpc_port))
    return asyncio.run(serve(config, ServedModel.from_servable(GatedModel(Path(hold)))))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
