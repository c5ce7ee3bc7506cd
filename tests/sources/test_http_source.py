"""http(s):// model sources against a local server serving real files: a saved model as an archive, a
safetensors file; and each failure a clear error naming the URI."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save

from slimserve.api.uri import InvalidUri, parse_uri
from slimserve.artifacts import StorageError, save_artifact
from slimserve.artifacts.storage import resolve_uri
from slimserve.models.loading import load_builtin, load_model


@pytest.fixture(scope="module")
def digits_archives(tmp_path_factory):
    """The builtin digits MLP saved as an artifact, packed as .tar.gz (one top folder) and .zip (flat)."""
    loaded = load_builtin("builtin://digits-mlp")
    folder = tmp_path_factory.mktemp("artifact") / "digits"
    save_artifact(f"file://{folder}", family="digits-mlp", recipe=loaded.recipe, tensors=loaded.model.state_dict(), source="builtin://digits-mlp")
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        tar.add(folder, arcname="digits")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in folder.iterdir():
            archive.write(path, path.name)
    return loaded, packed.getvalue(), zipped.getvalue()


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_an_archived_model_loads_with_and_without_its_digest(mirror, download_cache, digits_archives):
    loaded, tar_gz, zipped = digits_archives
    mirror.files |= {"/m/digits.tar.gz": tar_gz, "/m/digits.zip": zipped}
    pinned = load_model(f"{mirror.url}/m/digits.tar.gz?sha256={_sha(tar_gz)}")
    assert pinned.family.name == "digits-mlp" and _same_weights(pinned.model, loaded.model)
    unpinned = load_model(f"{mirror.url}/m/digits.zip")
    assert _same_weights(unpinned.model, loaded.model)
    assert mirror.requests[0][1] == "/m/digits.tar.gz"  # the sha256 parameter is the loader's, never sent


def test_a_single_file_is_downloaded_once_and_verified(mirror, download_cache):
    body = save({"w": torch.arange(6, dtype=torch.float32)})
    mirror.files["/w/model.safetensors"] = body
    uri = f"{mirror.url}/w/model.safetensors?sha256={_sha(body)}"
    path = resolve_uri(uri)
    assert path.name == "model.safetensors" and torch.equal(load_file(path)["w"], torch.arange(6, dtype=torch.float32))
    assert resolve_uri(uri) == path and mirror.gets("/w/model.safetensors") == 1  # the second read is the cache's


def test_a_redirect_is_followed(mirror, download_cache):
    mirror.files["/real.safetensors"] = body = save({"w": torch.ones(2)})
    mirror.redirects["/moved.safetensors"] = "/real.safetensors"
    assert resolve_uri(f"{mirror.url}/moved.safetensors").read_bytes() == body


@pytest.mark.parametrize(
    "setup, path, expected",
    [
        (lambda m: m.files.update({"/t.safetensors": b"x" * 5000}) or m.short.update({"/t.safetensors": 1000}), "/t.safetensors", "truncated download"),
        (lambda m: m.files.update({"/d.safetensors": b"body"}), f"/d.safetensors?sha256={'0' * 64}", "sha256 mismatch"),
        (lambda m: None, "/missing.tar.gz", "answered 404"),
        (lambda m: m.redirects.update({"/loop": "/loop"}), "/loop", r"more than 10 redirects \(a redirect loop\?\)"),
    ],
    ids=["truncated", "wrong-digest", "404", "redirect-loop"],
)
def test_a_failed_download_is_a_clear_error_naming_the_uri(mirror, download_cache, setup, path, expected):
    setup(mirror)
    uri = f"{mirror.url}{path}"
    with pytest.raises(StorageError, match=expected) as raised:
        resolve_uri(uri)
    assert repr(uri) in str(raised.value)
    assert not any(download_cache.glob("*/download.json"))  # nothing half-done is kept as a finished download


def _tar(members: dict[str, bytes], link: tuple[str, str] | None = None) -> bytes:
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            tar.addfile(info)
    return packed.getvalue()


@pytest.mark.parametrize(
    "body, expected",
    [
        (_tar({"model/config.json": b"{}", "../escape.txt": b"x"}), "archive member '../escape.txt' resolves outside"),
        (_tar({"config.json": b"{}"}, link=("weights.safetensors", "/etc/passwd")), "is a link or a device"),
    ],
    ids=["dot-dot-member", "link-member"],
)
def test_an_archive_member_cannot_escape_its_directory(mirror, download_cache, body, expected):
    mirror.files["/bad.tar.gz"] = body
    uri = f"{mirror.url}/bad.tar.gz"
    with pytest.raises(StorageError, match=expected) as raised:
        resolve_uri(uri)
    assert repr(uri) in str(raised.value)
    assert not (download_cache.parent / "escape.txt").exists() and not list(download_cache.rglob("escape.txt"))


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("https:///model.tar.gz", "names no host"),
        ("https://mirror/m.tar.gz?sha256=abc", "sha256 must be 64 hex digits"),
        (f"https://mirror/m.tar.gz?sha256={'a' * 64}&sha256={'b' * 64}", "sha256 given 2 times"),
        ("hf://org/../x", "is not a repository owner or name"),
        ("hf://org/name@../main", "is not a revision"),
        ("hf://org", "is not a repository owner or name"),
    ],
)
def test_source_uris_follow_the_one_rule_set(uri, expected):
    with pytest.raises(InvalidUri, match=expected):
        parse_uri(uri)


def test_source_uri_parts():
    pinned = parse_uri(f"https://mirror/m.tar.gz?token=t&sha256={'A' * 64}")
    assert pinned.http_url == "https://mirror/m.tar.gz?token=t" and pinned.sha256 == "a" * 64
    assert parse_uri("hf://org/name@v1.0").hf_repo == ("org/name", "v1.0")
    assert parse_uri("hf://org/name").hf_repo == ("org/name", None)


def _resolve_in_process(uri: str, cache: str, results) -> None:
    import os

    os.environ["SLIMSERVE_DOWNLOAD_CACHE"] = cache
    results.put(str(resolve_uri(uri)))


def test_processes_sharing_the_cache_download_once(mirror, download_cache):
    import multiprocessing

    body = save({"w": torch.randn(256, 256)})
    mirror.files["/shared/model.safetensors"] = body
    uri = f"{mirror.url}/shared/model.safetensors?sha256={_sha(body)}"
    mirror.delays["/shared/model.safetensors"] = 0.5  # the second process asks while the first downloads
    fork = multiprocessing.get_context("fork")  # the children only download: no torch, no threads of their own
    results = fork.Queue()
    workers = [fork.Process(target=_resolve_in_process, args=(uri, str(download_cache), results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    paths = {results.get(timeout=120) for _ in workers}
    for worker in workers:
        worker.join(timeout=60)
    assert len(paths) == 1 and all(worker.exitcode == 0 for worker in workers)
    assert mirror.gets("/shared/model.safetensors") == 1
