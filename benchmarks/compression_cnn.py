"""ResNet-18 compression benchmark: channel pruning + int8 static through PyTorch's export path, side by side with
the paths a user could pick instead, in one run.

Variants (all of the same model):
- fp32 eager, and fp32 `torch.compile`;
- pruned + int8 (SlimServe): channels pruned by `--prune` (Torch-Pruning's dependency graph, the residual sums
  kept consistent, the classifier whole), exported with `torch.export` as a user's program would be, then what a
  CompressionJob and the server do with such a program: int8-static through `prepare_pt2e` / `convert_pt2e` with
  torchao's X86InductorQuantizer (calibrated on task inputs), exported again with a dynamic batch, saved, loaded
  back without unpickling and compiled for serving (`optimize_for_inference`: freezing, so the quantize /
  dequantize patterns lower to oneDNN's int8 convolutions with the residual sums and ReLUs fused);
- ONNX Runtime int8 static (`quantize_static`, QDQ, per-channel weights, every graph optimisation, intra-op
  threads as given) of the unpruned fp32 model exported to ONNX, and of the same pruned model (what pruning alone
  gives that runtime); each with its thread pool spinning (its default) and sleeping, the better one counting.
  OpenMP threads sleep at barriers here (OMP_WAIT_POLICY=PASSIVE), as in SlimServe's images.

Speed: torchvision's ResNet-18 with random weights (1000 classes) on `--size` pixel images, images/s at batch 1 and
64, the same thread count for every variant, round-robin (one call of each variant per round) so that load from
other processes hits all alike; medians. Size: the bytes each stores (the .pt2 program, the .onnx file, the fp32
state_dict). Top-1: builtin://digits-resnet through the prune step of a CompressionJob (`--prune` of its channels in
`--prune-rounds` rounds, each followed by `--finetune-epochs` of recovery on the unpruned model's logits and the
labels; these defaults were chosen on the training digits alone, see prune_settings_cv.py), then int8 as above, on
the held-out digits, against fp32 and ONNX Runtime int8 of the fp32 model. Rounds and importance leave every
layer's width as pruning at once does, so the speed rows' model has the same widths.

Target: pruned + int8 at least 2x ONNX Runtime int8's images/s at batch 64, its top-1 within 1 point of fp32's.

    .venv/bin/python benchmarks/compression_cnn.py [--size 112] [--threads 2] [--rounds 5] [--prune 0.5]
        [--finetune-epochs 10] [--prune-rounds 3] [--importance magnitude] [--json FILE]
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


def served_int8_program(model: nn.Module, calibration: list[torch.Tensor], folder: Path, name: str) -> tuple[Callable, int]:
    """`model` as a user's `.pt2` program through what a CompressionJob and the server do with it: int8-static
    through pt2e (`int8_static_program`), exported again with a dynamic batch, saved, loaded back without
    unpickling and compiled for serving (`optimize_for_inference`: freezing, one static graph per batch bucket).
    Returns the forward and the saved program's size."""
    from slimserve.compression.quantize.configs import Int8StaticConfig
    from slimserve.compression.quantize.program import int8_static_program
    from slimserve.models.exported import export_program, load_program_module
    from slimserve.quant import optimize_for_inference

    example = calibration[0]
    program = export_program(model.eval(), (example,))  # as the prune step exports a pruned program again
    config = Int8StaticConfig(calibration_samples=sum(len(batch) for batch in calibration))
    quantized = int8_static_program(program.module(), config, [(batch,) for batch in calibration])
    path = folder / f"{name}.pt2"
    torch.export.save(export_program(quantized, (example,)), str(path))
    served = optimize_for_inference(load_program_module(path), (example,))
    return served, path.stat().st_size


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


def onnx_int8(model: nn.Module, calibration: list[torch.Tensor], folder: Path, name: str, threads: int):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, prepared_path, int8_path = (folder / f"{name}-{kind}.onnx" for kind in ("fp32", "prep", "int8"))
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (calibration[0],), str(fp32_path), input_names=["input"], dynamic_shapes=({0: batch},), dynamo=True)
    quant_pre_process(str(fp32_path), str(prepared_path))
    input_name = ort.InferenceSession(str(prepared_path)).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(calibration)

        def get_next(self):
            batch_inputs = next(self._batches, None)
            return None if batch_inputs is None else {input_name: batch_inputs.numpy()}

    quantize_static(
        str(prepared_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )
    forwards = {}
    for spinning in ("1", "0"):  # ORT's thread pool spins by default, OpenMP here sleeps: both ways, the best counts
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        session = ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])

        def forward(x: torch.Tensor, session=session) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {input_name: x.numpy()})[0])

        forwards["spin" if spinning == "1" else "no spin"] = forward
    return forwards, int8_path.stat().st_size


def state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


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


OURS = "pruned + int8 (SlimServe)"
ORT_INT8 = "ONNX Runtime int8"
ORT_PRUNED_INT8 = "ONNX Runtime int8, pruned"


def best_of(rows: dict[str, dict], label: str, column: str) -> float:
    """The better of ONNX Runtime's spinning and sleeping thread pools."""
    return max(row[column] for name, row in rows.items() if name.startswith(f"{label} ("))


def speed(args, folder: Path) -> dict[str, dict]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    shape = (3, args.size, args.size)
    calibration = [torch.rand(8, *shape) for _ in range(CALIBRATION_BATCHES)]
    pruned = copy.deepcopy(model)
    prune_channels(pruned, calibration[0], args.prune, pruned.fc)
    ours, ours_bytes = served_int8_program(pruned, calibration, folder, "resnet18-int8")
    variants = {
        "fp32 eager": (eager(model), state_bytes(model)),
        "fp32 torch.compile": (compiled(model), state_bytes(model)),
        OURS: (ours, ours_bytes),
    }
    for label, onnx_model in ((ORT_INT8, model), (ORT_PRUNED_INT8, pruned)):
        forwards, size = onnx_int8(onnx_model, calibration, folder, label.replace(" ", "-"), args.threads)
        variants.update({f"{label} ({how})": (forward, size) for how, forward in forwards.items()})
    rows = {name: {"sizeBytes": size} for name, (_, size) in variants.items()}
    for batch in BATCHES:
        images = torch.rand(batch, *shape)
        for name, value in images_per_second({name: forward for name, (forward, _) in variants.items()}, images, args.rounds).items():
            rows[name][f"imagesPerSecondBatch{batch}"] = round(value, 1)
    return rows


def top1(args, folder: Path) -> dict[str, float]:
    """Top-1 on the held-out digits of builtin://digits-resnet as a CompressionJob's prune step leaves it (channels
    pruned in `--prune-rounds` rounds, each followed by its recovery: `--finetune-epochs` of the unpruned model's
    logits and the labels), int8 through the same program path as the speed rows; beside fp32 and ONNX Runtime int8
    of the unpruned model."""
    from slimserve.api.compression_job import EvaluationSpec
    from slimserve.api.steps import PruneConfig
    from slimserve.compression.progress import Reporter
    from slimserve.compression.registry import apply_step
    from slimserve.compression.state import ModelState, StepContext
    from slimserve.compression.task_data import build_task
    from slimserve.models.loading import load_builtin

    loaded = load_builtin("builtin://digits-resnet")
    model = loaded.model.eval()
    evaluation = EvaluationSpec(max_drop=0.01, threads=args.threads)
    task = build_task(loaded, evaluation)
    original = ModelState.of_float(model, loaded.family, loaded.assets)
    fp32 = task.score(original.eager())
    context = StepContext(task, Reporter([], 1), args.threads, task.budget(evaluation), fp32, original)
    torch.manual_seed(0)  # as the pipeline seeds its first step
    step = PruneConfig(
        method="structured", amount=args.prune, finetune_epochs=args.finetune_epochs, rounds=args.prune_rounds,
        importance=args.importance,
    )
    pruned = apply_step(original, step, context).model.eval()
    calibration = [batch for (batch,) in task.calibration(64 * CALIBRATION_BATCHES, 64)]
    ours, _ = served_int8_program(pruned, calibration, folder, "digits-resnet-int8")
    ort_forward = onnx_int8(model, calibration, folder, "digits-resnet", args.threads)[0]["spin"]
    return {"fp32": fp32, "pruned (fp32)": task.score(eager(pruned)), OURS: task.score(ours), ORT_INT8: task.score(ort_forward)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=112, help="image side in pixels for the speed rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--finetune-epochs", type=int, default=10, help="the prune step's finetuneEpochs for the top-1")
    parser.add_argument("--prune-rounds", type=int, default=3, help="the prune step's rounds for the top-1")
    parser.add_argument("--importance", choices=("magnitude", "taylor"), default="magnitude", help="the prune step's importance for the top-1")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = speed(args, Path(tmp))
        accuracy = top1(args, Path(tmp))
    print(f"ResNet-18 on 3x{args.size}x{args.size}, pruned {args.prune:.0%}, {args.threads} threads, medians of {args.rounds} rounds")
    print(f"{'variant':<38} {'size MB':>8} {'img/s b1':>9} {'img/s b64':>10}")
    for name, row in rows.items():
        print(f"{name:<38} {row['sizeBytes'] / 1e6:>8.2f} {row['imagesPerSecondBatch1']:>9.1f} {row['imagesPerSecondBatch64']:>10.1f}")
    print("top-1 on the held-out digits (builtin://digits-resnet): " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
    ratio = rows[OURS]["imagesPerSecondBatch64"] / best_of(rows, ORT_INT8, "imagesPerSecondBatch64")
    same_model = rows[OURS]["imagesPerSecondBatch64"] / best_of(rows, ORT_PRUNED_INT8, "imagesPerSecondBatch64")
    drop = accuracy["fp32"] - accuracy[OURS]
    print(f"pruned + int8 / ONNX Runtime int8 (its better pool) at batch 64: {ratio:.2f}x (target >= 2x); top-1 drop {drop:+.4f} (target <= 0.01)")
    print(f"pruned + int8 / ONNX Runtime int8 of the same pruned model (its better pool) at batch 64: {same_model:.2f}x")
    if args.json:
        summary = {"ratioToOrtInt8Batch64": ratio, "ratioToOrtPrunedInt8Batch64": same_model, "top1Drop": drop}
        args.json.write_text(json.dumps({"rows": rows, "top1": accuracy, **summary}, indent=2))


if __name__ == "__main__":
    main()
