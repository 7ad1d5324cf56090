"""Where an instance model's object F1 goes: one fine-tuned model, every test image, every truth object
classed as matched, merged, split, missed or badly outlined (issue 20).

The model is fine-tuned as `bench_instances.py` fine-tunes one cell (same split, labelled draw and settings)
and saved, or loaded with --model. Per image it reports F1 with the post-processing tuned on the labelled
images, the best F1 any seed threshold of the tuning grid gives on that image (an oracle: how much tuning
could still win), and the truth objects by fate:

- matched: a prediction with IoU >= 0.5;
- merged: its main prediction covers at least half of another truth object too;
- split: two or more predictions each cover at least a fifth of it;
- missed: predictions cover less than half of it;
- outline: covered, but no prediction fits it to IoU 0.5 (edges too wide or too tight).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_instances import labelled_subset, load_or_finetune, load_split


def object_fates(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Count truth objects by fate (see the module docstring)."""
    t_ids = np.unique(truth[truth > 0])
    fates = dict.fromkeys(("matched", "merged", "split", "missed", "outline"), 0)
    if t_ids.size == 0:
        return fates
    p_area = np.bincount(pred.ravel())
    t_area = np.bincount(truth.ravel())
    both = (pred > 0) & (truth > 0)
    pairs, inter = np.unique(np.stack([pred[both], truth[both]]), axis=1, return_counts=True)
    by_truth: dict[int, list[tuple[int, int]]] = {}
    by_pred: dict[int, list[tuple[int, int]]] = {}
    for (p, t), n in zip(pairs.T, inter):
        by_truth.setdefault(int(t), []).append((int(p), int(n)))
        by_pred.setdefault(int(p), []).append((int(t), int(n)))
    for t in t_ids:
        cover = by_truth.get(int(t), [])
        covered = sum(n for _, n in cover)
        best_iou = max((n / (p_area[p] + t_area[t] - n) for p, n in cover), default=0.0)
        if best_iou >= 0.5:
            fates["matched"] += 1
        elif covered < 0.5 * t_area[t]:
            fates["missed"] += 1
        else:
            main = max(cover, key=lambda c: c[1])[0]
            others = [u for u, n in by_pred[main] if u != t and n >= 0.5 * t_area[u]]
            if others:
                fates["merged"] += 1
            elif sum(n >= 0.2 * t_area[t] for _, n in cover) >= 2:
                fates["split"] += 1
            else:
                fates["outline"] += 1
    return fates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="dsb2018")
    parser.add_argument("--labelled", default="5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head", default="distance")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--max-test", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--model", type=Path, required=True, help="fine-tuned model: loaded if it exists, else saved")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    from napari_tower.config import DataConfig, FinetuneConfig, PredictConfig
    from napari_tower.data import from_array
    from napari_tower.segment import Predictor
    from napari_tower.segment.metrics import dice, object_scores

    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = load_split(args.dataset, args.max_test)
    chosen = labelled_subset(len(train), args.labelled, args.seed)
    cfg = FinetuneConfig(steps=args.steps, batch=8, seed=args.seed, device="cpu", target="instance",
                         instance_head=args.head, val_fraction=0.0, val_every=0, checkpoint_every=0,
                         data=DataConfig(patch=128))
    model, train_s = load_or_finetune(args.model, [from_array(train[i][0][None], f"train{i}", axes="ZYX")
                                                   for i in chosen], [train[i][1][None] for i in chosen], cfg, None)
    if train_s is not None:
        print(f"fine-tuned in {train_s:.0f} s", flush=True)
    predictor = Predictor(model, PredictConfig(device="cpu", instances=True))
    tuned = predictor.postprocess()
    rows = []
    for k, (image, truth) in enumerate(test):
        img = from_array(image[None], f"test{k}", axes="ZYX")
        probs = predictor.probabilities(img.data[0], predictor.normalisation_for(img))
        pred = predictor.labels_from(probs)
        row = {"image": k, "shape": list(image.shape), "objects": int(len(np.unique(truth)) - 1),
               "median_area": float(np.median(np.bincount(truth.ravel())[1:][np.bincount(truth.ravel())[1:] > 0])),
               "f1": object_scores(pred, truth)["f1"], "dice": dice(pred > 0, truth > 0),
               "fates": object_fates(pred, truth)}
        if predictor.head is not None:
            oracle = {c["seed_threshold"]: object_scores(predictor.head.decode(probs, {**tuned, **c}), truth)["f1"]
                      for c in predictor.head.grid()}
            row["oracle_f1"], row["oracle_threshold"] = max(oracle.values()), max(oracle, key=oracle.get)
        rows.append(row)
        print(k, {key: (round(v, 3) if isinstance(v, float) else v) for key, v in row.items()}, flush=True)
    totals = {fate: sum(r["fates"][fate] for r in rows) for fate in rows[0]["fates"]}
    summary = {"dataset": args.dataset, "labelled": chosen, "seed": args.seed, "head": args.head,
               "postprocess": tuned, "mean_f1": float(np.mean([r["f1"] for r in rows])),
               "mean_oracle_f1": float(np.mean([r.get("oracle_f1", r["f1"]) for r in rows])),
               "fates": totals, "images": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "images"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
