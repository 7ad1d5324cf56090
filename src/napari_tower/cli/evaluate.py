"""`napari-tower evaluate`: compare predicted labels with ground truth."""

from __future__ import annotations

import argparse
import json

from ..errors import TowerError

NAME = "evaluate"
HELP = "compare predicted labels with ground truth"
BUILDS = ()

METRICS = ("dice", "iou", "precision", "recall", "f1", "ap")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    p.add_argument("--pred", nargs="+", required=True, help="predicted label images")
    p.add_argument("--truth", nargs="+", required=True, help="ground-truth label images, in the same order")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    """Score every plane of every pair; print a table (or JSON) with the mean and pooled scores."""
    import numpy as np

    from ..data import expand_inputs, read_labels
    from ..segment.metrics import evaluate

    preds, truths = expand_inputs(args.pred), expand_inputs(args.truth)
    if len(preds) != len(truths):
        raise TowerError(f"{len(preds)} prediction(s) but {len(truths)} truth file(s): give them in matching pairs")
    pred_planes: list[np.ndarray] = []
    truth_planes: list[np.ndarray] = []
    names: list[str] = []
    for p, t in zip(preds, truths):
        a, b = read_labels(p), read_labels(t)
        if a.shape != b.shape:
            raise TowerError(f"prediction {p} has shape {a.shape} but its truth {t} has shape {b.shape}: give "
                             "matching files in the same order")
        for k in range(a.shape[0]):
            pred_planes.append(a[k])
            truth_planes.append(b[k])
            names.append(p.name if a.shape[0] == 1 else f"{p.name}[{k}]")
    result = evaluate(pred_planes, truth_planes)
    for row, name in zip(result["images"], names):
        row["name"] = name
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    keys = [k for k in METRICS if k in result["mean"]]
    print("image".ljust(32) + "".join(k.rjust(10) for k in keys))
    for row in result["images"]:
        print(str(row["name"])[:31].ljust(32) + "".join(f"{row[k]:10.4f}" for k in keys))
    print("mean".ljust(32) + "".join(f"{result['mean'][k]:10.4f}" for k in keys))
    print("pooled".ljust(32) + "".join(f"{result['pooled'][k]:10.4f}" if k in result["pooled"] else " " * 10
                                       for k in keys))
    return 0
