"""ResNet-18 compression benchmark: channel pruning + int8 static through PyTorch's export path, side by side with
the paths a user could pick instead, in one run.

Variants (all of the same model):
- fp32 eager, and fp32 `torch.compile`;
- pruned + int8: channels pruned by `--prune` (Torch-Pruning's dependency graph, the residual sums kept
  consistent, the classifier whole), exported with `torch.export`, quantized with `prepare_pt2e` / `convert_pt2e`
  and torchao's X86InductorQuantizer (static, per-channel weights, calibrated on task inputs), compiled;
- ONNX Runtime int8 static (`quantize_static`, QDQ, per-channel) of the unpruned fp32 model exported to ONNX.

Speed: torchvision's ResNet-18 with random weights (1000 classes) on `--size` pixel images, images/s at batch 1 and
64, the same thread count for every variant, round-robin (one call of each variant per round) so that load from
other processes hits all alike; medians. Size: the bytes each stores (the .pt2 program, the .onnx file, the fp32
state_dict). Top-1: the same pipeline on builtin://digits-resnet (pruned, fine-tuned 3 epochs, int8) on the
held-out digits, against fp32 and ONNX Runtime int8 of the fp32 model.

Target: pruned + int8 at least 2x ONNX Runtime int8's images/s at batch 64, its top-1 within 1 point of fp32's.

    .venv/bin/python benchmarks/compression_cnn.py [--size 112] [--threads 2] [--rounds 5] [--prune 0.5] [--json FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see compression_minilm.py: sleeping OpenMP threads on a shared machine

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

BATCHES = (1, 64)
CALIBRATION_BATCHES = 8


def prune_channels(model: nn.Module, example: torch.Tensor, amount: float, classifier: nn.Module) -> nn.Module:
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(
        model, example_inputs=example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=amount,
        ignored_layers=[classifier],
    )
    pruner.step()
    return model.eval()


def int8_static(model: nn.Module, calibration: list[torch.Tensor]) -> torch.export.ExportedProgram:
    """The model exported with a dynamic batch, quantized through pt2e with the x86 Inductor quantizer."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    batch = torch.export.Dim("batch", min=1, max=1024)
    example = calibration[0]
    # strict: a module called twice (ResNet blocks' one ReLU) is then two partitions, as the quantizer expects
    graph = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},), strict=True).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for inputs in calibration:
            prepared(inputs)
    converted = convert_pt2e(prepared)
    # convert_pt2e leaves the fp32 weights it quantized on the module, unused: the program keeps only the int8 ones.
    used = {node.target for node in converted.graph.nodes if node.op == "get_attr"}
    for name, _ in [*converted.named_parameters(), *converted.named_buffers()]:
        if name not in used:
            owner, _, attribute = name.rpartition(".")
            delattr(converted.get_submodule(owner) if owner else converted, attribute)
    return torch.export.export(converted, (example,), dynamic_shapes=({0: batch},))


def compiled(module: nn.Module) -> Callable:
    compiled_module = torch.compile(module, dynamic=False)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return compiled_module(x)

    return forward


def eager(module: nn.Module) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    return forward


def onnx_int8(model: nn.Module, example: torch.Tensor, calibration: list[torch.Tensor], folder: Path, threads: int):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, prepared_path, int8_path = folder / "fp32.onnx", folder / "prep.onnx", folder / "int8.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(fp32_path), input_names=["input"], dynamic_shapes=({0: batch},), dynamo=True)
    quant_pre_process(str(fp32_path), str(prepared_path))
    name = ort.InferenceSession(str(prepared_path)).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(calibration)

        def get_next(self):
            batch_inputs = next(self._batches, None)
            return None if batch_inputs is None else {name: batch_inputs.numpy()}

    quantize_static(
        str(prepared_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return forward, int8_path.stat().st_size


def state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def program_bytes(program: torch.export.ExportedProgram, folder: Path, name: str) -> int:
    """The .pt2 file's size, after checking it loads without unpickling (what the server's loader demands)."""
    from slimserve.models.exported import inspect_program

    path = folder / f"{name}.pt2"
    torch.export.save(program, str(path))
    inspect_program(path.read_bytes(), path.name)
    return path.stat().st_size


def images_per_second(variants: dict[str, Callable], images: torch.Tensor, rounds: int) -> dict[str, float]:
    for forward in variants.values():  # compile and warm up
        forward(images)
        forward(images)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, forward in variants.items():
            start = time.perf_counter()
            forward(images)
            times[name].append(time.perf_counter() - start)
    return {name: len(images) / statistics.median(values) for name, values in times.items()}


def speed(args, folder: Path) -> dict[str, dict]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    shape = (3, args.size, args.size)
    calibration = [torch.rand(8, *shape) for _ in range(CALIBRATION_BATCHES)]
    pruned = copy.deepcopy(model)
    prune_channels(pruned, calibration[0], args.prune, pruned.fc)
    program = int8_static(pruned, calibration)
    ort_forward, ort_bytes = onnx_int8(model, calibration[0], calibration, folder, args.threads)
    variants = {
        "fp32 eager": eager(model),
        "fp32 torch.compile": compiled(model),
        f"pruned {args.prune:.0%} + int8 (pt2e, compiled)": compiled(program.module()),
        "ONNX Runtime int8 static": ort_forward,
    }
    sizes = {
        "fp32 eager": state_bytes(model), "fp32 torch.compile": state_bytes(model),
        f"pruned {args.prune:.0%} + int8 (pt2e, compiled)": program_bytes(program, folder, "resnet18-int8"),
        "ONNX Runtime int8 static": ort_bytes,
    }
    rows = {name: {"sizeBytes": sizes[name]} for name in variants}
    for batch in BATCHES:
        images = torch.rand(batch, *shape)
        for name, value in images_per_second(variants, images, args.rounds).items():
            rows[name][f"imagesPerSecondBatch{batch}"] = round(value, 1)
    return rows


def top1(args, folder: Path) -> dict[str, float]:
    from slimserve.models import digits
    from slimserve.models.loading import load_builtin

    data = digits.digits_data()
    model = load_builtin("builtin://digits-resnet").model.eval()
    x_test, y_test = torch.from_numpy(data.x_test), data.y_test
    calibration = [torch.from_numpy(data.x_train[i : i + 64]) for i in range(0, 64 * CALIBRATION_BATCHES, 64)]
    pruned = copy.deepcopy(model)
    prune_channels(pruned, calibration[0], args.prune, pruned.classifier)
    torch.manual_seed(0)
    digits.train_classifier(pruned, data, epochs=3)
    program = int8_static(pruned.eval(), calibration)
    ort_forward, _ = onnx_int8(model, calibration[0], calibration, folder, args.threads)

    def accuracy(forward: Callable) -> float:
        return float((forward(x_test).argmax(1).numpy() == y_test).mean())

    return {
        "fp32": accuracy(eager(model)),
        f"pruned {args.prune:.0%} + int8 (pt2e, compiled)": accuracy(compiled(program.module())),
        "ONNX Runtime int8 static": accuracy(ort_forward),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=112, help="image side in pixels for the speed rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = speed(args, Path(tmp))
        accuracy = top1(args, Path(tmp))
    ours, ort_name = f"pruned {args.prune:.0%} + int8 (pt2e, compiled)", "ONNX Runtime int8 static"
    print(f"ResNet-18 on 3x{args.size}x{args.size}, {args.threads} threads, medians of {args.rounds} rounds")
    print(f"{'variant':<34} {'size MB':>8} {'img/s b1':>9} {'img/s b64':>10}")
    for name, row in rows.items():
        print(f"{name:<34} {row['sizeBytes'] / 1e6:>8.2f} {row['imagesPerSecondBatch1']:>9.1f} {row['imagesPerSecondBatch64']:>10.1f}")
    print("top-1 on the held-out digits (builtin://digits-resnet): " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
    ratio = rows[ours]["imagesPerSecondBatch64"] / rows[ort_name]["imagesPerSecondBatch64"]
    drop = accuracy["fp32"] - accuracy[ours]
    print(f"pruned + int8 / ONNX Runtime int8 at batch 64: {ratio:.2f}x (target >= 2x); top-1 drop {drop:+.4f} (target <= 0.01)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "top1": accuracy, "ratioToOrtInt8Batch64": ratio, "top1Drop": drop}, indent=2))


if __name__ == "__main__":
    main()
