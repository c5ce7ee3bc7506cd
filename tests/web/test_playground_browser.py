"""The playground in headless Chromium: what the page shows equals the REST answer for the same input.

Screenshots land in tests/web/artifacts/ (gitignored) and their paths are printed.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from tests.web.web_helpers import ARTIFACTS, rest_json, run_node

LATENCY = re.compile(r"^\d+\.\d ms$")


def open_playground(server, name: str, **action) -> dict:
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"playground-{name}.png"
    shown = run_node("playground_check.js", {"url": f"http://{server.http_url}/", "screenshot": str(screenshot), **action})
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 0
    assert shown["consoleErrors"] == []
    assert shown["status"] == "OK"
    assert LATENCY.match(shown["latency"]), shown["latency"]
    return shown


def signature_rows(metadata: dict) -> list[str]:
    """The page's signature table rows as their text: kind, name, datatype, shape."""
    return [
        f"{kind}{t['name']}{t['datatype']}[{', '.join(str(d) for d in t['shape'])}]"
        for kind, tensors in (("in", metadata["inputs"]), ("out", metadata["outputs"]))
        for t in tensors
    ]


def assert_shown_number(text: str, expected: float) -> None:
    """`text` is `expected` as the page rounds it: three decimals, or one significant decimal in e-notation."""
    shown = float(text)
    if "e" in text:
        assert math.isclose(shown, expected, rel_tol=0.051), (text, expected)
    else:
        assert abs(shown - expected) <= 0.0005 + 1e-6, (text, expected)


def assert_page_shows_rest_answer(server, shown: dict, pixels: list[float]) -> None:
    status, rest = rest_json(server, "POST", "/v2/models/digits-mlp/infer",
                             {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": pixels}]})
    assert status == 200
    outputs = {output["name"]: output for output in rest["outputs"]}
    logits = np.asarray(outputs["logits"]["data"], dtype=np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()

    assert shown["mode"] == "digits" and shown["model"] == "digits-mlp"
    assert shown["shown"]["pixels"] == pixels
    assert shown["shown"]["label"] == str(outputs["label"]["data"][0])
    assert len(shown["shown"]["probabilities"]) == 10
    for text, expected in zip(shown["shown"]["probabilities"], probabilities):
        assert_shown_number(text, expected)
    assert shown["batchSize"] == str(rest["parameters"]["batch_size"])


@pytest.mark.parametrize("digit", [3, 8])
def test_digit_picked_in_the_browser_shows_the_rest_answer(chromium, digits_web_server, digit_samples, digit):
    shown = open_playground(digits_web_server, f"digits-{digit}", digit=digit)
    assert_page_shows_rest_answer(digits_web_server, shown, digit_samples[digit]["pixels"])
    _, metadata = rest_json(digits_web_server, "GET", "/v2/models/digits-mlp")
    assert shown["signature"] == signature_rows(metadata)
    assert "slimserve" in shown["server"]


def test_digit_drawn_with_the_mouse_shows_the_rest_answer(chromium, digits_web_server):
    stroke = [[4, row] for row in range(1, 7)]  # a vertical bar: a one
    shown = open_playground(digits_web_server, "digits-drawn", stroke=stroke, burst=True)
    pixels = shown["shown"]["pixels"]
    assert all(pixels[row * 8 + 4] == 16 for row in range(1, 7))  # the stroke's cells are fully inked
    assert pixels[0] == 0 and pixels[63] == 0
    assert_page_shows_rest_answer(digits_web_server, shown, pixels)
    # Eight requests at once: each answer names the batch it ran in, between 1 and all eight.
    assert len(shown["burstBatchSizes"]) == 8
    assert all(1 <= int(size) <= 8 for size in shown["burstBatchSizes"])


def test_two_texts_embedded_in_the_browser_show_the_rest_cosine_and_values(chromium, minilm_web_server):
    texts = ["The server batches requests together.", "Requests are grouped into batches by the server."]
    shown = open_playground(minilm_web_server, "minilm", texts=texts)
    status, rest = rest_json(minilm_web_server, "POST", "/v2/models/minilm-l6/infer",
                             {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]})
    assert status == 200
    (embedding,) = rest["outputs"]
    a, b = np.asarray(embedding["data"], dtype=np.float64).reshape(embedding["shape"])
    cosine = float(a @ b / np.sqrt((a @ a) * (b @ b)))

    assert shown["mode"] == "text" and shown["model"] == "minilm-l6"
    assert abs(float(shown["shown"]["cosine"]) - cosine) <= 0.00005 + 1e-6
    for text, values in ((shown["shown"]["embeddingA"], a), (shown["shown"]["embeddingB"], b)):
        first = [float(v) for v in re.findall(r"-?\d+\.\d{4}", text)]
        assert len(first) == 8
        np.testing.assert_allclose(first, values[:8], atol=0.00005 + 1e-6)
        assert text.endswith(f"({len(values)} values)")
    assert shown["batchSize"] == "2"
