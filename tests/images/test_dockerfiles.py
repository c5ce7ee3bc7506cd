"""The Dockerfile (no container engine here), one target per image: hadolint-clean, hardened final stages, and
entrypoints that really run: the ENTRYPOINT of each target is parsed and run as a process from the project's
venv. A target's instructions include those of the stages it is built FROM."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
DOCKERFILE = IMAGES / "Dockerfile"
BIN = Path(sys.executable).parent
REQUIREMENTS = IMAGES / "requirements.py"
# The image -> the `slimserve` subcommand its entrypoint runs.
SUBCOMMANDS = {"operator": "operator", "compressor": "compress", "server": "serve"}
NON_ROOT = "65532"
OCI_LABELS = ("title", "description", "version", "revision", "created", "source", "licenses")
# The image -> the extra of pyproject.toml its dependency stage installs (tests/images/test_extras.py).
EXTRAS = {"operator": "operator", "compressor": "compress", "server": "serve"}
TORCH_IMAGES = {"compressor", "server"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((instruction, " ".join(args.split())))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


@pytest.fixture(params=sorted(SUBCOMMANDS), ids=str)
def image(request) -> str:
    return request.param


def stages() -> dict[str, Stage]:
    return {stage.name: stage for stage in parse_dockerfile(DOCKERFILE) if stage.name}


def lineage(name: str) -> list[Stage]:
    """The stage and those it is built FROM, the first base first."""
    chain = [stages()[name]]
    while chain[0].base in stages():
        chain.insert(0, stages()[chain[0].base])
    return chain


def final_stage(image: str) -> Stage:
    """The image's target, with the instructions of the stages below it."""
    chain = lineage(image)
    return Stage(chain[0].base, image, [i for stage in chain for i in stage.instructions])


def copied_stages(image: str) -> list[str]:
    return [re.match(r"--from=(\S+) ", args).group(1) for args in final_stage(image).all("COPY")]


def test_hadolint_is_clean():
    dockerfiles = sorted(str(p) for p in IMAGES.rglob("*Dockerfile*") if not p.name.endswith(".dockerignore"))
    assert dockerfiles == [str(DOCKERFILE)], "one Dockerfile, a target per image"
    out = subprocess.run([str(BIN / "hadolint"), *dockerfiles], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_finds_problems():
    """The lint is not vacuous: a Dockerfile with the usual mistakes fails it."""
    bad = "FROM python:latest\nRUN pip install torch\nRUN cd /tmp && apt-get install -y gcc\n"
    out = subprocess.run([str(BIN / "hadolint"), "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3003", "DL3008"):
        assert rule in out.stdout


def test_multi_stage_with_a_slim_final_stage(image):
    all_stages = parse_dockerfile(DOCKERFILE)
    assert len(all_stages) >= 2, "a builder stage and a final stage"
    assert all_stages[0].name == "builder"
    final = final_stage(image)
    base_default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert final.base == "${PYTHON_IMAGE}" and base_default and base_default.group(1).startswith("python:3.11-slim")
    assert "builder" not in [stage.name for stage in lineage(image)]
    assert f"{image}-dependencies" in [stage.name for stage in lineage(image)]
    # From the builder come only the parts of the lock and the project's venv: no compiler, no pip, no sources.
    copies = final.all("COPY")
    assert copies[-1] == "--from=project /opt/slimserve /opt/slimserve"
    for copy in copies[:-1]:
        assert re.fullmatch(r"--from=lock-parts (/src/parts/[\w-]+\.(txt|sh) )+/opt/slimserve/lock/", copy), copy
    for stage in copied_stages(image):
        assert lineage(stage)[0].name == "builder"
    for run in final.all("RUN"):
        if image in TORCH_IMAGES and "apt-get" in run:
            continue  # the compiler torch.compile needs at run time (test_torch_images_carry_a_cxx_compiler)
        assert not re.search(r"\b(apt-get|apk|gcc|g\+\+|make)\b", run), run
        # pip only from a tmpfs mount of the RUN that installs with it: no layer keeps it
        assert not re.search(r"(?<!-)\bpip\b", run) or run.startswith("--mount=type=tmpfs,target=/opt/pip "), run


def apt_packages(install: str) -> set[str]:
    """The packages an `apt-get install` names (the Python headers' conditional word left out)."""
    words = re.search(r"apt-get install -y --no-install-recommends (.*?) &&", install).group(1).split()
    return {word for word in words if not word.startswith("${")}


def test_torch_images_carry_a_cxx_compiler(image):
    """inductor builds its CPU kernels with g++ when a model first runs (the compressor measures compiled
    candidates, the server compiles what it serves): the torch images install it, without recommends and
    without apt's lists; the operator image has none."""
    installs = [run for run in final_stage(image).all("RUN") if "apt-get install" in run]
    if image not in TORCH_IMAGES:
        assert installs == []
        return
    for install in installs:
        assert re.search(r"apt-get install -y --no-install-recommends \S", install), install
        assert install.endswith("rm -rf /var/lib/apt/lists/*"), install
    assert ["g++" in apt_packages(install) for install in installs].count(True) == 1, installs


def test_only_the_server_image_carries_libnghttp2(image):
    """The gRPC port's HTTP/2 runs in libnghttp2 (serving/http2): the server image installs the library and
    nothing else beside the compiler; the other images have no use for it."""
    packages = set().union(*(apt_packages(run) for run in final_stage(image).all("RUN") if "apt-get install" in run))
    expected = {"operator": set(), "compressor": {"g++"}, "server": {"g++", "libnghttp2-14"}}
    assert packages == expected[image]


def lock_parts() -> dict[str, str]:
    """The parts of the lock the lock-parts stage writes: part -> the extra it is the locked selection of."""
    run = " ".join(stages()["lock-parts"].all("RUN"))
    return dict((part, extra) for extra, part in
                re.findall(r"requirements\.py --lock images/requirements\.lock --extra (\S+) [^&]*> parts/([\w-]+)\.txt", run))


def installed_parts(image: str) -> list[str]:
    runs = " ".join(run for stage in lineage(image) for run in stage.all("RUN"))
    return re.findall(r"install-locked\.sh /opt/slimserve/lock/([\w-]+)\.txt", runs)


def test_each_image_installs_its_extra(image):
    """The dependencies of a target are its extra's; the project itself comes without any."""
    extras = [lock_parts()[part] for part in installed_parts(image)]
    assert EXTRAS[image] in extras
    assert set(extras) <= {EXTRAS[image], "models"}
    project = " ".join(stages()["project"].all("RUN"))
    assert re.search(r"\bpip .*install --no-cache-dir --no-deps \.$", project), project


INSTALL_LOCKED = IMAGES / "install-locked.sh"


def test_pip_leaves_no_cache(image):
    """pip writes no cache; the wheelhouse install-locked.sh downloads into is a cache mount, outside the layers."""
    for stage in lineage(image) + [s for name in copied_stages(image) for s in lineage(name)]:
        for run in stage.all("RUN"):
            if re.search(r"(^|&&)\s*(--mount=\S+\s+)*\S*install-locked\.sh ", run):  # runs it
                assert "--mount=type=cache,target=/var/cache/wheels," in run.partition(" install-locked")[0], run
            for command in re.split(r"&&|;", run):
                if re.search(r"\bpip( --python \S+)? install\b", command):
                    assert "--no-cache-dir" in command, command
    script = INSTALL_LOCKED.read_text()
    assert "wheels=/var/cache/wheels" in script and "install --no-cache-dir" in script


def test_every_dependency_is_hash_checked(image):
    """Each dependency stage installs its locked part with install-locked.sh: downloaded and installed with
    --require-hashes, without resolving or an index. Only torch from a PyTorch index (TORCH_INDEX_URL) is that
    index's build."""
    script = [line for line in INSTALL_LOCKED.read_text().splitlines() if not line.startswith("#")]
    pip_commands = re.findall(r'-m pip --python "\$python" (\w+) ([^\n]*(?:\\\n[^\n]*)*)', "\n".join(script))
    assert [verb for verb, _ in pip_commands] == ["download", "install"]
    for _, args in pip_commands:
        assert "--require-hashes" in args and "--no-deps" in args
    assert "--no-index" in pip_commands[1][1]
    for stage in lineage(image) + [s for name in copied_stages(image) for s in lineage(name)]:
        for run in stage.all("RUN"):
            for command in re.split(r"&&|;|\bthen\b", run):
                if re.search(r"\bpip\b.* install\b", command) and "--no-deps ." not in command:
                    assert "-r /opt/slimserve/lock/torch.txt" in command, command
                elif re.search(r"\binstall-locked\.sh /", command):
                    assert re.search(r"install-locked\.sh /(tmp|opt/slimserve/lock)/[\w-]+\.txt", command), command


def test_runs_as_a_numeric_non_root_user(image):
    users = final_stage(image).all("USER")
    assert users and users[-1] == f"{NON_ROOT}:{NON_ROOT}"


def test_oci_labels(image):
    labels = " ".join(final_stage(image).all("LABEL"))
    for name in OCI_LABELS:
        assert f"org.opencontainers.image.{name}=" in labels, name
    assert f'org.opencontainers.image.title="slimserve-{image}"' in labels


def test_health_check(image):
    checks = final_stage(image).all("HEALTHCHECK")
    assert len(checks) == 1
    if image == "compressor":
        assert checks[0] == "NONE"  # a batch pod: nothing serves a health endpoint
    else:
        assert "CMD [" in checks[0] and "/health" in checks[0]


def test_entrypoint_is_the_slimserve_subcommand(image):
    entrypoints = final_stage(image).all("ENTRYPOINT")
    assert len(entrypoints) == 1
    assert exec_form(entrypoints[0]) == ["slimserve", SUBCOMMANDS[image]]
    assert not final_stage(image).all("CMD")


def test_entrypoint_runs(image):
    """Exactly the image's ENTRYPOINT (and CMD, if any), run from the venv with --help."""
    final = final_stage(image)
    argv = exec_form(final.all("ENTRYPOINT")[0]) + [a for cmd in final.all("CMD") for a in exec_form(cmd)]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert f"usage: slimserve {SUBCOMMANDS[image]}" in out.stdout


def _modules_of(distributions: set[str]) -> set[str]:
    """Top-level modules that only these distributions provide."""
    canonical = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    return {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if dists and all(canonical(d) in distributions for d in dists)
    }


def test_operator_entrypoint_needs_no_torch():
    """The operator image installs only its own dependencies: the operator's modules must not import the rest."""
    def names(*args: str) -> set[str]:
        out = subprocess.run([sys.executable, str(REQUIREMENTS), *args], check=True, capture_output=True, text=True)
        return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", line).group(0).lower()) for line in out.stdout.split()}

    others = names() - names("--extra", "operator")
    blocked = sorted(_modules_of(others))
    assert "torch" in blocked and "grpc" in blocked
    code = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({blocked!r}))\n"  # None in sys.modules: importing raises ImportError
        "from slimserve.controller import app, metrics\n"
        "app.import_handlers()  # every controller module the operator runs\n"
        "from slimserve.cli.main import main\n"
        "sys.exit(main(['operator', '--help']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: slimserve operator" in out.stdout
    assert [lock_parts()[part] for part in installed_parts("operator")] == ["operator"]


def test_requirements_follow_pyproject():
    run = lambda *args: subprocess.run([sys.executable, str(REQUIREMENTS), *args], capture_output=True, text=True)  # noqa: E731
    torch = run("torch")
    assert torch.returncode == 0 and re.fullmatch(r"torch==[\d.]+\n", torch.stdout)
    rest = run("--except", "torch").stdout.split()
    assert rest and not any(line.startswith("torch==") for line in rest)
    assert "torchao" in " ".join(rest)
    unknown = run("kopf", "no-such-package")
    assert unknown.returncode == 2 and "no-such-package" in unknown.stderr
    # An extra: its packages at the dependencies' versions, with those of the extras it includes.
    serve = run("--extra", "serve").stdout.split()
    assert torch.stdout.strip() in serve and any(line.startswith("uvicorn[standard]") for line in serve)
    assert run("--extra", "serve", "--without-extra", "models").stdout.split() == [
        line for line in serve if line not in run("--extra", "models").stdout.split()]
    assert run("--extra", "operator", "torch").returncode == 2
    assert run("--extra", "no-such-extra").returncode == 2


def test_dockerignore_keeps_the_context_small():
    ignore = (IMAGES / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"]  # ignore everything, then allow what the Dockerfile copies
    for copied in ("!pyproject.toml", "!README.md", "!operator/", "!images/requirements.py", "!images/requirements.lock",
                   "!images/install-locked.sh"):
        assert copied in ignore


def stand_in_engine(tmp_path: Path, *, holds: str = "") -> tuple[Path, Path]:
    """An engine that records its arguments; `image inspect` finds the references in `holds` only."""
    tmp_path.mkdir(exist_ok=True)
    log = tmp_path / "calls"
    engine = tmp_path / "engine"
    engine.write_text(
        f'#!/bin/sh\nif [ "$1" = image ]; then eval "ref=\\${{$#}}"\n'
        f'  case " {holds} " in *" $ref "*) echo sha256:1; exit 0;; esac; exit 1\nfi\n'
        f'echo "$@" >> {shlex.quote(str(log))}\n'
    )
    engine.chmod(engine.stat().st_mode | stat.S_IEXEC)
    return engine, log


def make_images(engine: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(
        ["make", "-s", "images", f"CONTAINER_ENGINE={engine}", "IMAGE_REGISTRY=registry.test/ml", "IMAGE_TAG=9.8.7"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out


def test_make_images_builds_every_image_with_the_engine(tmp_path):
    """`make images` with a stand-in engine: five builds of one Dockerfile's targets, each tagged by its content
    and then with the tag from the variables; the content-tagged references are printed."""
    engine, log = stand_in_engine(tmp_path)
    out = make_images(engine)
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    builds = [argv for argv in calls if argv[0] == "build"]
    tags = dict(argv[1:] for argv in calls if argv[0] == "tag")
    built = {}
    for argv in builds:
        assert argv[-1] == "."
        dockerfile = argv[argv.index("-f") + 1]
        assert (REPO / dockerfile).is_file()
        cuda = any(a.startswith("TORCH_INDEX_URL=http") for a in argv)
        content_ref = argv[argv.index("-t") + 1]
        assert re.fullmatch(r"registry\.test/ml/\w+:content-[0-9a-f]{16}", content_ref)
        built[tags[content_ref]] = (dockerfile, argv[argv.index("--target") + 1], cuda)
        assert "VERSION=9.8.7" in argv
    assert built == {
        "registry.test/ml/operator:9.8.7": ("images/Dockerfile", "operator", False),
        "registry.test/ml/compressor:9.8.7": ("images/Dockerfile", "compressor", False),
        "registry.test/ml/server:9.8.7": ("images/Dockerfile", "server", False),
        "registry.test/ml/compressor:9.8.7-cuda": ("images/Dockerfile", "compressor", True),
        "registry.test/ml/server:9.8.7-cuda": ("images/Dockerfile", "server", True),
    }
    assert out.stdout.split() == [argv[argv.index("-t") + 1] for argv in builds]


def test_make_images_skips_what_the_engine_holds(tmp_path):
    """A warm `make images`: every content tag is there, so nothing is built; the tags from the variables
    still point at them."""
    first, _ = stand_in_engine(tmp_path / "cold")
    content_refs = make_images(first).stdout.split()
    engine, log = stand_in_engine(tmp_path, holds=" ".join(content_refs))
    assert make_images(engine).stdout.split() == content_refs
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    assert [argv[0] for argv in calls] == ["tag"] * 5
    assert {argv[2] for argv in calls} == {f"registry.test/ml/{image}:9.8.7{cuda}" for image in ("compressor", "server")
                                           for cuda in ("", "-cuda")} | {"registry.test/ml/operator:9.8.7"}


def test_content_tag_follows_what_is_built_not_the_build_labels(tmp_path):
    """The content key: the same for another revision or build time, another for another torch index."""
    engine, _ = stand_in_engine(tmp_path)

    def content_ref(*args: str) -> str:
        out = subprocess.run([str(IMAGES / "build.sh"), str(engine), "registry.test/ml/server", "1", "-f",
                              "images/Dockerfile", "--target", "server", *args],
                             cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip()

    base = content_ref("--build-arg", "REVISION=abc", "--build-arg", "CREATED=2026-01-01T00:00:00Z")
    assert content_ref("--build-arg", "REVISION=def", "--build-arg", "CREATED=2026-02-02T00:00:00Z") == base
    assert content_ref("--build-arg", "REVISION=abc", "--build-arg", "TORCH_INDEX_URL=https://example.test") != base


def test_chart_pulls_the_images_make_builds():
    values = yaml.safe_load((REPO / "charts" / "slimserve" / "values.yaml").read_text())["images"]
    makefile = (REPO / "Makefile").read_text()
    registry = re.search(r"^IMAGE_REGISTRY \?= (\S+)$", makefile, re.M).group(1)
    for key, image in [("operator", "operator"), ("compressor", "compressor"), ("compressorGpu", "compressor"),
                       ("server", "server"), ("serverGpu", "server")]:
        assert values[key]["repository"] == f"{registry}/{image}"


def test_torch_comes_from_the_index_build_arg():
    """Both torch images get torch from TORCH_INDEX_URL, the PyTorch CPU index unless the build says otherwise."""
    parts = stages()["lock-parts"]
    assert parts.all("ARG") == ["TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"]
    assert "requirements.py --extra models torch torchvision > parts/torch.txt" in " ".join(parts.all("RUN"))
    assert "${TORCH_INDEX_URL:+--except torch torchvision} > parts/models.txt" in " ".join(parts.all("RUN"))
    for image in ("server", "compressor"):
        chain = lineage(f"{image}-dependencies")
        args = [a for stage in chain for a in stage.all("ARG")]
        assert args == ["TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"]
        runs = " ".join(run for stage in chain for run in stage.all("RUN"))
        assert '--index-url "${TORCH_INDEX_URL}" -r /opt/slimserve/lock/torch.txt' in runs
        assert "models" in installed_parts(image)
    assert not any(stage.all("ARG") for stage in lineage("operator-dependencies"))
