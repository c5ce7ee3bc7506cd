"""`torch.export` programs (`.pt2`) as models: inspected, loaded from the inspected bytes, used as modules.

`torch.export.load` trusts the archive it reads. It unpickles with `weights_only=False` every weight and
tensor constant the archive's own JSON marks `use_pickle`, unpickles custom and opaque objects, legacy
`<model>.pt` weight files and pre-2.7 archives, retries the sample inputs with `weights_only=False` when the
restricted load refuses them, loads AOTInductor shared libraries, and hands every shape expression to
`sympy.sympify` (an `eval`). `inspect_program` refuses an archive that would take any of those paths, reading
it with torch's own zip reader, so the bytes judged are the bytes loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export.pt2_archive import constants as pt2
from torch.export.pt2_archive._package import PT2ArchiveReader
from torch.utils._sympy import functions as torch_sympy_functions

from slimserve.artifacts.cache import cache_dir
from slimserve.artifacts.digest import sha256_bytes, sha256_file
from slimserve.models.asset_names import PROGRAM_FILE


class ProgramError(ValueError):
    """A .pt2 file that cannot be loaded or is not a classifier (FP32 inputs, one tensor of logits out)."""

    reason = "InvalidModel"


class UnsafeProgramError(ProgramError):
    """A .pt2 archive that would make torch run code while loading it (unpickling, native code, eval)."""

    reason = "UnsafeModel"


# Shape expressions are written with sympy's `srepr` ("Add(Symbol('s77', positive=True, integer=True),
# Integer(1))") and read back with `sympy.sympify`, which evaluates the string: only sympy's class names, torch's
# sympy functions, assumption keywords, symbol names and numbers may appear (no builtins such as exec or open).
_SYMPY_NAMES = frozenset({
    "Abs", "Add", "And", "BooleanFalse", "BooleanTrue", "Equality", "ExprCondPair", "False", "Float", "GreaterThan",
    "ITE", "Integer", "LessThan", "Max", "Min", "Mod", "Mul", "Not", "Or", "Piecewise", "Pow", "Rational",
    "StrictGreaterThan", "StrictLessThan", "Symbol", "True", "Unequality", "ceiling", "false", "floor", "nan",
    "oo", "sqrt", "true", "zoo", *torch_sympy_functions.__all__,
    # assumptions of Symbol(...) and the precision of Float(...)
    "commutative", "even", "finite", "infinite", "integer", "negative", "nonnegative", "nonpositive", "nonzero",
    "odd", "positive", "precision", "rational", "real", "zero",
})
_SYMBOL = re.compile(r"[a-z]+[0-9]+")  # s77, u3: the symbols torch creates
_NUMBER = r"[0-9]+(?:\.[0-9]*)?(?:e[-+]?[0-9]+)?"
_EXPRESSION_TOKEN = re.compile(
    rf"\s+|'(?:[a-z]+[0-9]+|-?{_NUMBER})'|{_NUMBER}|[A-Za-z_][A-Za-z0-9_]*|\*\*|//|[-+*/%(),<>=!&|~^]"
)
_MAX_EXPRESSION = 2000
_MAX_BATCH = 1 << 16  # the dynamic batch a changed program is exported with: 1.._MAX_BATCH rows


def load_program_module(path: Path) -> nn.Module:
    """The program's module (a GraphModule with the program's parameters), loaded without unpickling."""
    from slimserve.quant import int8_static  # noqa: F401  (the quantized_decomposed ops an int8 program calls)

    data = path.read_bytes()
    inspect_program(data, path.name)
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # torch raises many types for a corrupt archive
        raise ProgramError(f"{path.name} is not a loadable torch.export program: {_one_line(exc)}") from None
    return program.module()


def program_precision(module: nn.Module) -> str | None:
    """`int8-static` for a program pt2e quantized (its graph calls the quantized_decomposed ops), else None: its
    int8 weights are buffers, so the float parameters left (biases) would read as fp32."""
    graph = getattr(module, "graph", None)
    calls = (node.target for node in graph.nodes if node.op == "call_function") if graph is not None else ()
    if any(getattr(target, "namespace", None) == "quantized_decomposed" for target in calls):
        return "int8-static"
    return None


def inspect_program(data: bytes, name: str) -> None:
    """Refuse, with an UnsafeProgramError naming the part, an archive whose loading would run code."""
    _check_layout(data, name)
    try:
        reader = PT2ArchiveReader(io.BytesIO(data))  # what torch.export.load reads the archive with
        records = set(reader.get_file_names())
    except Exception as exc:
        raise ProgramError(f"{name} is not a loadable torch.export program: {_one_line(exc)}") from None
    native = sorted(record for record in records if record.startswith(pt2.AOTINDUCTOR_DIR))
    if native:
        raise UnsafeProgramError(f"{name}: {native[0]}: AOTInductor native code is not loaded; save the program without it")
    prefix, suffix = pt2.MODELS_FILENAME_FORMAT.split("{}")
    # The same slicing as torch's loader, so every program it would load is inspected.
    models = sorted(record[len(prefix) : -len(suffix)] for record in records if record.startswith(pt2.MODELS_DIR))
    if not models:
        raise ProgramError(f"{name} holds no exported program ({pt2.MODELS_DIR}*.json)")
    for model in models:
        for legacy in (f"{pt2.WEIGHTS_DIR}{model}.pt", f"{pt2.CONSTANTS_DIR}{model}.pt"):
            if legacy in records:
                raise UnsafeProgramError(f"{name}: {legacy}: legacy pickled tensors; save the program again with torch.export.save")
        _check_payloads(reader, records, name, pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format(model), pt2.WEIGHTS_DIR, ("",))
        _check_payloads(
            reader, records, name, pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format(model), pt2.CONSTANTS_DIR,
            (pt2.TENSOR_CONSTANT_FILENAME_PREFIX,),
        )
        _check_sample_inputs(reader, records, name, pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format(model))
        _check_expressions(reader, name, pt2.MODELS_FILENAME_FORMAT.format(model))


def _check_layout(data: bytes, name: str) -> None:
    # Entries outside the archive's one folder are the pre-2.7 layout, whose .pt files torch unpickles.
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ProgramError(f"{name} is not a loadable torch.export program (not a zip file: {exc})") from None
    root = entries[0].partition("/")[0] + "/" if entries else ""
    outside = [entry for entry in entries if not entry.startswith(root)]
    if not entries or outside:
        raise UnsafeProgramError(f"{name}: {outside[0] if outside else '(empty)'}: not in the layout torch.export.save writes")


def _check_payloads(reader, records: set[str], name: str, config_file: str, directory: str, prefixes: tuple[str, ...]) -> None:
    if config_file not in records:
        return  # torch refuses the archive itself
    config = _json_record(reader, name, config_file).get("config")
    if not isinstance(config, dict):
        raise ProgramError(f"{name}: {config_file}: expected a 'config' mapping")
    for fqn, meta in config.items():
        path_name = meta.get("path_name") if isinstance(meta, dict) else None
        part = f"{directory}{path_name} ({fqn!r})"
        if not isinstance(path_name, str) or not path_name.startswith(prefixes):
            raise UnsafeProgramError(f"{name}: {part}: only plain tensors are loaded, not custom or opaque objects")
        if meta.get("use_pickle") is not False:
            raise UnsafeProgramError(f"{name}: {part}: marked to be unpickled; only raw tensor bytes are loaded")


def _check_sample_inputs(reader, records: set[str], name: str, record: str) -> None:
    # torch loads these with weights_only=True and, when that refuses them, again with weights_only=False.
    if record not in records:
        return
    data = reader.read_bytes(record)
    if not data:
        return
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        detail = f" (it names {refused.group(1)})" if refused else ""
        raise UnsafeProgramError(f"{name}: {record}: needs unpickling beyond tensors{detail}") from None


def _check_expressions(reader, name: str, record: str) -> None:
    for expression in _expression_strings(_json_record(reader, name, record)):
        tokens = _EXPRESSION_TOKEN.findall(expression)
        names = {token for token in tokens if token[0].isalpha() or token[0] == "_"}  # quoted ones are plain
        unknown = sorted(n for n in names if n not in _SYMPY_NAMES and not _SYMBOL.fullmatch(n))
        if len(expression) > _MAX_EXPRESSION or "".join(tokens) != expression or unknown:
            shown = expression if len(expression) <= 80 else expression[:77] + "..."
            raise UnsafeProgramError(f"{name}: {record}: shape expression {shown!r} is not a plain arithmetic expression")


def _expression_strings(node: Any):
    """Every `expr_str` of a serialized program: torch parses each with sympy.sympify."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr_str" and isinstance(value, str):
                yield value
            else:
                yield from _expression_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _expression_strings(item)


def _json_record(reader, name: str, record: str) -> dict[str, Any]:
    try:
        value = json.loads(reader.read_bytes(record))
    except ValueError as exc:
        raise ProgramError(f"{name}: {record} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProgramError(f"{name}: {record}: expected a JSON object")
    return value


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def classifier_signature(module: nn.Module) -> tuple[list[tuple[str, list[int]]], int]:
    """(inputs, classes) of a classifier program: each FP32 input's name and shape (-1 for the batch and any other
    dynamic dimension; a single input is called `input`) and the width of the [batch, classes] logits it returns."""
    graph = getattr(module, "graph", None)
    placeholders = [node for node in graph.nodes if node.op == "placeholder"] if graph is not None else []
    user_inputs = [node for node in placeholders if not node.name.startswith(("p_", "b_", "c_"))]
    if not user_inputs:
        raise ProgramError("expected a program with at least one input tensor, found none")
    inputs, examples = [], []
    for node in user_inputs:
        value = node.meta.get("val")
        shape = getattr(value, "shape", None)
        if shape is None or len(shape) < 2 or value.dtype != torch.float32:
            raise ProgramError(
                f"input {node.name!r}: expected an FP32 tensor of shape [batch, ...], found {getattr(value, 'dtype', '?')} {list(shape or [])}"
            )
        name = "input" if len(user_inputs) == 1 else node.name
        inputs.append((name, [-1] + [dim if isinstance(dim, int) else -1 for dim in shape[1:]]))
        examples.append(torch.zeros(2, *(dim if isinstance(dim, int) else _hint(dim) for dim in shape[1:])))
    try:
        with torch.inference_mode():
            out = module(*examples)
    except Exception as exc:  # a guard of the program (a batch it was not exported for) raises many types
        raise ProgramError(f"the program refused a batch of 2 (export it with a dynamic batch dimension): {_one_line(exc)}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        raise ProgramError("expected the program to return one [batch, classes] tensor of logits")
    return inputs, int(out.shape[1])


def _hint(dim) -> int:
    """The example size a dynamic dimension was traced with."""
    hint = getattr(getattr(dim, "node", None), "hint", None)
    return int(hint) if hint is not None else 1


def is_program(module: nn.Module) -> bool:
    """Whether `module` is a program's module (or one rewritten from it) rather than a model's own classes."""
    return isinstance(module, torch.fx.GraphModule)


def export_program(module: nn.Module, examples: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """`module` exported again as a program, with dimension 0 of every input one dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    try:
        return torch.export.export(module, examples, dynamic_shapes=tuple({0: batch} for _ in examples))
    except Exception as exc:  # torch raises many types for a module it cannot trace
        raise ProgramError(f"the changed program does not export with a dynamic batch: {_one_line(exc)}") from None


def saved_program_assets(program: torch.export.ExportedProgram) -> Path:
    """A cache folder holding `program` as `program.pt2`, keyed by its content, checked as a loaded one would be."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    data = buffer.getvalue()
    inspect_program(data, PROGRAM_FILE)  # what is written is what the loader accepts
    folder = cache_dir("programs", sha256_bytes(data)[:24])
    target = folder / PROGRAM_FILE
    if not target.is_file():
        staging = folder / f".{PROGRAM_FILE}.{os.getpid()}"
        staging.write_bytes(data)
        staging.replace(target)
    return folder


def program_assets(path: Path) -> Path:
    """A cache folder holding the program as `program.pt2`, keyed by its content (what artifacts copy)."""
    folder = cache_dir("programs", sha256_file(path)[:24])
    target = folder / PROGRAM_FILE
    if not target.is_file():
        staging = folder / f".{PROGRAM_FILE}.{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        shutil.copyfile(path, staging)
        staging.replace(target)
    return folder
