"""Choose the prune step's recovery settings for builtin://digits-resnet on its training digits alone.

k-fold cross-validation of the training split (stratified, seeded): for each fold a model is trained the way the
builtin is (its recipe, epochs, seed and one thread) on the other folds, pruned and recovered through the product's
prune step with each candidate setting, and scored on the fold. The held-out digits the benchmark reports are
never read. A fold's model is weaker than the builtin (it saw three quarters of the data), and the recovered
students often score above it, so settings are compared by the pruned model's accuracy on the folds, the same
fold models for every setting (paired), not by the drop.

    .venv/bin/python benchmarks/prune_settings_cv.py [--folds 4] [--amount 0.5] [--threads 1]
        [--settings '[{"finetuneEpochs": 10}, {"finetuneEpochs": 10, "rounds": 3}]'] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

DEFAULT_SETTINGS = [
    {"finetuneEpochs": 10},
    {"finetuneEpochs": 10, "importance": "taylor"},
    {"finetuneEpochs": 20},
    {"finetuneEpochs": 30},
    {"finetuneEpochs": 10, "rounds": 3},
    {"finetuneEpochs": 10, "rounds": 3, "importance": "taylor"},
    {"finetuneEpochs": 6, "rounds": 5},
]


def fold_model(data, seed: int):
    """builtin://digits-resnet's recipe trained as the builtin is, on `data`'s training rows only."""
    from slimserve.models import digits
    from slimserve.models.digits_resnet import build_resnet, default_recipe
    from slimserve.models.torch_threads import torch_threads

    torch.manual_seed(seed)
    model = build_resnet(default_recipe())
    with torch_threads(digits.TRAIN_THREADS):
        digits.train_classifier(model, data, epochs=digits.TRAIN_EPOCHS, seed=seed)
    return model.eval()


def main() -> None:
    from sklearn.model_selection import StratifiedKFold

    from slimserve.api.steps import PruneConfig
    from slimserve.compression.progress import Reporter
    from slimserve.compression.registry import apply_step
    from slimserve.compression.state import ModelState, StepContext
    from slimserve.compression.tasks import ClassificationTask
    from slimserve.models import digits
    from slimserve.models.families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--amount", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--settings", type=json.loads, default=DEFAULT_SETTINGS, help="a JSON list of prune step fields")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = digits.digits_data()
    splits = StratifiedKFold(args.folds, shuffle=True, random_state=0).split(data.x_train, data.y_train)
    scores: dict[str, list[float]] = {json.dumps(s, sort_keys=True): [] for s in args.settings}
    fold_scores = []
    for fold, (train_rows, fold_rows) in enumerate(splits):
        part = digits.DigitsData(data.x_train[train_rows], data.y_train[train_rows], data.x_train[fold_rows], data.y_train[fold_rows])
        model = fold_model(part, digits.TRAIN_SEED)
        task = ClassificationTask(part.x_train, part.y_train, part.x_test, part.y_test)
        original = ModelState.of_float(model, FAMILIES["digits-resnet"], None)
        fp32 = task.score(original.eager())
        fold_scores.append(fp32)
        for setting in args.settings:
            start = time.perf_counter()
            context = StepContext(task, Reporter([], 1), args.threads, 0.01, fp32, original)
            torch.manual_seed(0)  # as the pipeline seeds its first step
            config = PruneConfig.model_validate({"method": "structured", "amount": args.amount, **setting})
            score = task.score(apply_step(original, config, context).eager())
            scores[json.dumps(setting, sort_keys=True)].append(score)
            print(f"fold {fold}: fold model {fp32:.4f}, {setting}: {score:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"pruned {args.amount:.0%}, {args.folds} folds of the training digits; fold models {statistics.mean(fold_scores):.4f} on average")
    for setting, values in sorted(scores.items(), key=lambda item: -statistics.mean(item[1])):
        print(f"{setting:<60} mean {statistics.mean(values):.4f}  folds {' '.join(f'{v:.4f}' for v in values)}")
    if args.json:
        args.json.write_text(json.dumps({"foldModels": fold_scores, "scores": scores}, indent=2))


if __name__ == "__main__":
    main()
