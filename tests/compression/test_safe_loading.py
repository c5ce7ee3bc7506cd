""".pt2 archives are inspected before torch reads them: every part torch.export.load would unpickle (or run
as native code, or evaluate) is refused by the compressor's loader, the server's loader and the CLI, and the
payload never runs; what torch.export.save writes for an ordinary model still loads."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from slimserve.artifacts import save_artifact
from slimserve.cli.main import main
from slimserve.models import load_servable
from slimserve.models.exported import load_program_module
from slimserve.models.families import PROGRAM_FILE
from slimserve.models.loading import ModelLoadError, load_model

WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SYMBOL = "Symbol('s77', positive=True, integer=True)"


class FileCreatingPayload:
    """Unpickling this creates a file: the proof that an archive ran code in the loading process."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class ClassifierWithConstants(nn.Module):
    """A classifier with a parameter, a buffer and a tensor constant: every kind of tensor torch.export.save writes."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.register_buffer("shift", torch.linspace(0, 1, 3))
        self.scale = torch.tensor([1.0, 2.0, 3.0])

    def forward(self, x):
        return self.linear(x) * self.scale + self.shift


@pytest.fixture
def program(tmp_path) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = ClassifierWithConstants().eval()
    exported = torch.export.export(model, (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "good.pt2"
    torch.export.save(exported, str(path))
    return path, model


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"


def _torch_saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _rewritten(source: Path, target: Path, edit: Callable[[dict[str, bytes]], None], *, keep_root: bool = True) -> Path:
    """A copy of a torch.export.save archive with its records (names below the archive's folder) edited."""
    with zipfile.ZipFile(source) as archive:
        entries = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    root = next(iter(entries)).partition("/")[0]
    records = {name.removeprefix(root + "/"): data for name, data in entries.items()}
    edit(records)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records.items():
            archive.writestr(f"{root}/{name}" if keep_root else name, data)
    return target


def _edit_config(records: dict[str, bytes], config: str, fqn: str, **changes) -> str:
    payload = json.loads(records[config])
    payload["config"][fqn].update(changes)
    records[config] = json.dumps(payload).encode()
    return payload["config"][fqn]["path_name"]


def _pickled_weight(marker):
    def edit(records):
        path_name = _edit_config(records, WEIGHTS_CONFIG, "linear.weight", use_pickle=True)
        records[f"data/weights/{path_name}"] = _torch_saved(FileCreatingPayload(marker))
    return edit


def _pickled_constant(marker):
    def edit(records):
        path_name = _edit_config(records, CONSTANTS_CONFIG, "scale", use_pickle=True)
        records[f"data/constants/{path_name}"] = _torch_saved(FileCreatingPayload(marker))
    return edit


def _opaque_constant(marker):
    def edit(records):
        _edit_config(records, CONSTANTS_CONFIG, "scale", path_name="opaque_obj_0", use_pickle=True)
        records["data/constants/opaque_obj_0"] = pickle.dumps(FileCreatingPayload(marker))
    return edit


def _pickled_sample_inputs(marker):
    def edit(records):
        records["data/sample_inputs/model.pt"] = _torch_saved(FileCreatingPayload(marker))
    return edit


def _legacy_weights_file(marker):
    def edit(records):
        records["data/weights/model.pt"] = _torch_saved(FileCreatingPayload(marker))
    return edit


def _evaluated_shape_expression(marker):
    def edit(records):
        text = records["models/model.json"].decode()
        assert SYMBOL in text  # what torch 2.14 writes for the dynamic batch
        records["models/model.json"] = text.replace(SYMBOL, f"open('{marker}', 'w') and {SYMBOL}", 1).encode()
    return edit


def _native_code(marker):
    def edit(records):
        records["data/aotinductor/model/model.so"] = b"\x7fELF not really"
    return edit


# case -> (edit, what the error names). Unpatched, torch.export.load runs the payload of the first five and
# of the shape expression, and tries to load the library.
TAMPERED = {
    "pickled weight": (_pickled_weight, "data/weights/weight_0 ('linear.weight'): marked to be unpickled"),
    "pickled tensor constant": (_pickled_constant, "data/constants/tensor_0 ('scale'): marked to be unpickled"),
    "opaque object constant": (_opaque_constant, "data/constants/opaque_obj_0 ('scale'): only plain tensors"),
    "sample inputs beyond tensors": (_pickled_sample_inputs, "data/sample_inputs/model.pt: needs unpickling beyond tensors (it names io.open)"),
    "legacy weights file": (_legacy_weights_file, "data/weights/model.pt: legacy pickled tensors"),
    "evaluated shape expression": (_evaluated_shape_expression, "models/model.json: shape expression"),
    "AOTInductor library": (_native_code, "data/aotinductor/model/model.so: AOTInductor native code"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_archive_is_refused_by_the_compressors_loader(case, program, marker, tmp_path):
    edit, part = TAMPERED[case]
    tampered = _rewritten(program[0], tmp_path / "tampered.pt2", edit(marker))
    with pytest.raises(ModelLoadError) as refused:
        load_model(f"file://{tampered}")
    assert refused.value.reason == "UnsafeModel"
    assert str(refused.value).startswith(f"model.uri: file://{tampered}: ") and part in str(refused.value)
    assert not marker.exists()


def test_archive_in_the_pre_2_7_layout_is_refused(program, marker, tmp_path):
    def legacy_layout(records):
        program_json = records["models/model.json"]
        records.clear()
        records.update({
            "version": b"8.0", "serialized_exported_program.json": program_json,
            "serialized_state_dict.pt": _torch_saved(FileCreatingPayload(marker)),
        })

    tampered = _rewritten(program[0], tmp_path / "old.pt2", legacy_layout, keep_root=False)
    with pytest.raises(ModelLoadError, match="old.pt2: .*version: not in the layout torch.export.save writes") as refused:
        load_model(f"file://{tampered}")
    assert refused.value.reason == "UnsafeModel" and not marker.exists()


def test_ordinary_program_with_buffers_and_constants_still_loads(program):
    path, model = program
    loaded = load_model(f"file://{path}")
    sample = torch.randn(5, 4)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(sample), model(sample))
    assert loaded.recipe == {"num_features": 4, "num_classes": 3, "program": PROGRAM_FILE}


@pytest.mark.parametrize("case", ["pickled weight", "sample inputs beyond tensors", "evaluated shape expression"])
def test_artifact_carrying_a_tampered_program_is_refused_by_the_server(case, program, marker, tmp_path):
    """An artifact whose manifest vouches for a tampered program.pt2 (whoever can write the artifact can write
    its manifest): the server's loader refuses it before torch reads it."""
    edit, part = TAMPERED[case]
    tampered = _rewritten(program[0], tmp_path / "tampered.pt2", edit(marker))
    good = load_program_module(program[0])
    ref = save_artifact(
        f"file://{tmp_path / 'artifact'}", family="torch-export",
        recipe={"num_features": 4, "num_classes": 3, "program": PROGRAM_FILE},
        tensors=dict(good.state_dict()), extra_files={PROGRAM_FILE: tampered.read_bytes()},
    )
    with pytest.raises(ModelLoadError) as refused:
        load_servable(ref.uri, expected_digest=ref.digest)
    assert refused.value.reason == "UnsafeModel"
    assert f"{PROGRAM_FILE}: {part}" in str(refused.value)
    assert not marker.exists()


def test_cli_reports_the_unsafe_part(program, marker, tmp_path, monkeypatch, capsys):
    tampered = _rewritten(program[0], tmp_path / "tampered.pt2", _pickled_weight(marker))
    spec = {
        "model": {"uri": f"file://{tampered}"}, "output": {"uri": f"file://{tmp_path / 'out'}"},
        "steps": [{"prune": {"method": "unstructured", "amount": 0.5}}], "evaluation": {"threads": 1},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setenv("SLIMSERVE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.delenv("SLIMSERVE_JOB_SPEC", raising=False)
    code = main(["compress", "--progress", "json", "--spec", str(tmp_path / "spec.json")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and not marker.exists()
    assert err.startswith("slimserve compress: UnsafeModel: ") and "data/weights/weight_0 ('linear.weight')" in err, err
    assert (tmp_path / "termination-log").read_text().startswith("UnsafeModel: ")
