"""`slimserve serve` of a decoder as a real process, driven by the official `openai` client and raw HTTP:
completions and chat (whole and streamed), the OIP generate extension, seeds, stop sequences, bad input,
a disconnect freeing its slot, and back-pressure (queue full: 429; waited too long: 503)."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_fixtures import CONTEXT, save_random_llama  # noqa: E402
from serving_helpers import ServerProcess, metric_samples, post_json, request  # noqa: E402

openai = pytest.importorskip("openai")

MODEL = "tiny-llama"
SLOTS, WAITING, QUEUE_TIMEOUT_S = 2, 1, 2
LONG = CONTEXT - 16  # tokens that keep a sequence in its slot for seconds


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = save_random_llama(tmp_path_factory.mktemp("decoder") / MODEL)
    process = ServerProcess(
        f"file://{directory}", tmp_path_factory.mktemp("logs"), "--max-sequences", str(SLOTS),
        "--max-waiting", str(WAITING), "--queue-timeout-s", str(QUEUE_TIMEOUT_S),
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://{server.http_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_metadata_say_it_is_a_decoder(server, client):
    assert [model.id for model in client.models.list()] == [MODEL]
    metadata = json.loads(request(server.http_url, "GET", f"/v2/models/{MODEL}")[2])
    assert metadata["parameters"]["task"] == "text-generation"
    assert metadata["parameters"]["context_length"] == CONTEXT
    status, body = post_json(server.http_url, f"/v2/models/{MODEL}/infer",
                             {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["w1"]}]})
    assert status == 400 and f"/v2/models/{MODEL}/generate" in body["error"]


def test_completion_whole_and_streamed_agree(client):
    whole = client.completions.create(model=MODEL, prompt="w1 w2 w3", max_tokens=12, temperature=0, n=1,
                                      presence_penalty=0, frequency_penalty=0.0, logit_bias={})  # neutral: taken
    choice = whole.choices[0]
    assert choice.finish_reason == "length" and len(choice.text.split()) == 12
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens) == (3, 12, 15)
    chunks = list(client.completions.create(model=MODEL, prompt="w1 w2 w3", max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and len(chunks) > 3  # one event per token, not one at the end


def test_chat_whole_and_streamed_with_the_models_template(client):
    messages = [{"role": "system", "content": "w7"}, {"role": "user", "content": "w8 w9"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.prompt_tokens == len("system: w7 user: w8 w9 assistant:".split())
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0, stream=True)
    deltas = [chunk.choices[0].delta for chunk in stream]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == whole.choices[0].message.content


def test_a_seed_reproduces_a_sampled_completion(client):
    def sample(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt="w4", max_tokens=24, temperature=1.0, top_p=0.9,
                                         seed=seed, extra_body={"top_k": 20}).choices[0].text

    first = sample(11)
    assert sample(11) == first
    assert sample(12) != first


def test_a_stop_sequence_ends_the_text_and_is_not_returned(client):
    text = client.completions.create(model=MODEL, prompt="w5 w6", max_tokens=10, temperature=0).choices[0].text
    stop = " " + text.split()[3]
    cut = client.completions.create(model=MODEL, prompt="w5 w6", max_tokens=10, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_oip_generate_and_generate_stream(server):
    status, whole = post_json(server.http_url, f"/v2/models/{MODEL}/generate",
                              {"text_input": "w1 w2", "parameters": {"max_tokens": 5, "temperature": 0}})
    assert status == 200 and whole["model_name"] == MODEL and whole["finish_reason"] == "length"
    assert whole["completion_tokens"] == 5 and len(whole["text_output"].split()) == 5
    status, headers, body = request(server.http_url, "POST", f"/v2/models/{MODEL}/generate_stream",
                                    json.dumps({"text_input": "w1 w2", "parameters": {"max_tokens": 5, "temperature": 0}}).encode())
    events = [json.loads(line.removeprefix(b"data: ")) for line in body.split(b"\n\n") if line]
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert "".join(e["text_output"] for e in events) == whole["text_output"]
    assert events[-1]["finish_reason"] == "length"


@pytest.mark.parametrize("document, param", [
    ({"prompt": "w1 " * (CONTEXT + 1)}, "prompt"),
    ({"prompt": "w1", "max_tokens": CONTEXT}, "max_tokens"),
    ({"prompt": "w1", "best_of": 2}, "best_of"),
    ({"prompt": "w1", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "w1", "temperature": "hot"}, "temperature"),
    ({"prompt": ["w1", "w2"]}, "prompt"),
    ({"prompt": "w1", "stop": ""}, "stop"),
])
def test_bad_completion_requests_are_400_naming_the_field(client, document, param):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, **{"prompt": document.pop("prompt")}, extra_body=document)
    assert refused.value.status_code == 400
    assert refused.value.body["param"] == param and refused.value.body["type"] == "invalid_request_error"
    assert refused.value.body["message"].startswith(param)


@pytest.mark.parametrize("messages, param", [
    ([], "messages"),
    ([{"role": "user"}], "messages[0].content"),
    ([{"role": "robot", "content": "w1"}], "messages[0].role"),
])
def test_bad_chat_requests_are_400_naming_the_field(client, messages, param):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=messages)
    assert refused.value.body["param"] == param


def test_an_unknown_model_is_404_and_bad_generate_input_is_an_oip_error(server, client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="w1")
    status, body = post_json(server.http_url, f"/v2/models/{MODEL}/generate",
                             {"text_input": "w1", "parameters": {"max_tokens": "5"}})
    assert status == 400 and body["error"].startswith("parameters.max_tokens")


def _open_stream(server, max_tokens: int = LONG) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A streamed completion whose first event has arrived (it holds a slot)."""
    host, port = server.http_url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    body = {"model": MODEL, "prompt": "w3", "max_tokens": max_tokens, "stream": True}
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")
    return connection, response


def _wait_for(server, name: str, wanted: float, timeout_s: float = 20) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = metric_samples(server.http_url)
        if samples.get(name) == wanted:
            return samples
        time.sleep(0.02)
    raise AssertionError(f"{name} never became {wanted}: {samples.get(name)}")


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    before = metric_samples(server.http_url)["slimserve_generated_tokens_total"]
    connection, _response = _open_stream(server)
    _wait_for(server, "slimserve_running_sequences", 1)
    connection.close()
    after = _wait_for(server, "slimserve_running_sequences", 0)
    assert after["slimserve_generated_tokens_total"] - before < LONG  # cut short, not run to max_tokens
    assert after["slimserve_kv_cache_used_tokens"] == 0


def test_a_client_that_leaves_before_its_whole_answer_frees_its_slot(server):
    before = metric_samples(server.http_url)["slimserve_generated_tokens_total"]
    host, port = server.http_url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    body = {"text_input": "w3", "parameters": {"max_tokens": LONG}}
    connection.request("POST", f"/v2/models/{MODEL}/generate", json.dumps(body), {"Content-Type": "application/json"})
    _wait_for(server, "slimserve_running_sequences", 1)
    connection.close()
    after = _wait_for(server, "slimserve_running_sequences", 0)
    assert after["slimserve_generated_tokens_total"] - before < LONG


def test_a_full_queue_is_429_and_a_long_wait_503_both_with_retry_after(server, client):
    holders = [_open_stream(server) for _ in range(SLOTS)]
    waited: list = []
    waiter = threading.Thread(target=lambda: waited.append(
        post_json(server.http_url, "/v1/completions", {"model": MODEL, "prompt": "w1", "max_tokens": 1})))
    try:
        waiter.start()
        _wait_for(server, "slimserve_waiting_sequences", WAITING)
        with pytest.raises(openai.RateLimitError) as refused:
            client.completions.create(model=MODEL, prompt="w1", max_tokens=1)
        assert int(refused.value.response.headers["retry-after"]) >= 1
        waiter.join(QUEUE_TIMEOUT_S + 30)
        status, body = waited[0]
        assert status == 503 and "no sequence slot was free" in body["error"]["message"]
    finally:
        for connection, _response in holders:
            connection.close()
    _wait_for(server, "slimserve_running_sequences", 0)
    assert client.completions.create(model=MODEL, prompt="w1", max_tokens=2).choices[0].text


def test_a_decoder_artifact_is_served_pinned_to_its_digest(server, client, tmp_path_factory):
    from slimserve.artifacts import save_artifact
    from slimserve.models.decoder import load_decoder
    from slimserve.models.families import FAMILIES

    source = server.artifact.removeprefix("file://")
    loaded = load_decoder(source)
    family = FAMILIES["decoder"]
    uri = f"file://{tmp_path_factory.mktemp('artifacts') / 'tiny-llama-artifact'}"
    ref = save_artifact(uri, family=family.name, recipe=family.recipe_of(loaded.model),
                        tensors=loaded.model.state_dict(), extra_files=family.asset_files(loaded.directory),
                        source=server.artifact)
    pinned = ServerProcess(uri, tmp_path_factory.mktemp("logs"), "--artifact-digest", ref.digest,
                           "--model-name", MODEL).start()
    try:
        metadata = json.loads(request(pinned.http_url, "GET", f"/v2/models/{MODEL}")[2])
        assert metadata["versions"] == [ref.digest.removeprefix("sha256:")[:12]]
        assert metadata["parameters"]["task"] == "text-generation"
        status, answer = post_json(pinned.http_url, f"/v2/models/{MODEL}/generate",
                                   {"text_input": "w9 w8", "parameters": {"max_tokens": 8, "temperature": 0}})
        expected = client.completions.create(model=MODEL, prompt="w9 w8", max_tokens=8, temperature=0)
        assert status == 200 and answer["text_output"] == expected.choices[0].text
    finally:
        pinned.stop()
