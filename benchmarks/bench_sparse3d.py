"""3D against 2D-per-plane fine-tuning from two painted slices, on synthetic volumes (issue 17).

Each seed draws a training volume and a held-out test volume of bright, partly touching spheres in noise
(isotropic voxels), "paints" instance ids on two slices of the training volume and fine-tunes from scratch,
at an equal step budget and equal voxels per step:

- 3d: a 3D U-Net on (patch_z, patch, patch) patches around the painted voxels; unpainted slices carry no
  loss; 3D instances by the seeded 3D watershed (the boundary head);
- 3d capped: the same with the capped distance head (issue 20): each voxel's distance to its object's edge,
  known in-plane on painted slices and across z only between neighbouring painted ones; seeds above a
  threshold tuned on the painted slices, grown by a 3D watershed on the distance;
- 2d: a 2D U-Net on the two painted planes (batch x patch_z planes per step), predicted plane by plane;
  scored twice: "2d planes" (plane-by-plane instances, ids distinct per plane: what 2D mode gives today, so
  every object spanning slices is split by construction) and "2d+3d ws" (its per-plane probabilities
  stacked and grown by the same 3D watershed: the fair consistency baseline).

Scores on the test volume: foreground Dice, object F1 of 3D objects at IoU 0.5 and the split share (true
objects whose predicted id changes between neighbouring slices). Verdicts at the seed level
(`napari_tower.stats.compare`), every arm against `--reference`. Synthetic data only: the real-data comparison
(isbi2012_em, sstem) is the lead's benchmark.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_sparse3d.py --seeds 3 --steps 300 --out /tmp/sparse3d
    python benchmarks/bench_sparse3d.py --seeds 5 --arms 3d "3d capped" --reference "3d capped" --painted 10 11 21 22
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name

PAINTED = (10, 21)
ARMS = ("3d", "3d capped", "2d planes", "2d+3d ws")


def spheres(shape: tuple[int, int, int], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy volume of `n` spheres (radius 5-9 voxels, later ones overwrite earlier: touching objects)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i in range(n):
        c = rng.uniform([3, 6, 6], [shape[0] - 3, shape[1] - 6, shape[2] - 6])
        r = rng.uniform(5, 9)
        labels[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r * r] = i + 1
    texture = rng.normal(0, 0.1, shape)
    image = (labels > 0) * (0.5 + 0.3 * rng.random(n + 1)[labels]) + 0.15 + texture
    return image.astype(np.float32), labels


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from napari_tower.segment.metrics import dice, object_scores_3d, split_share

    return {"dice": dice(pred > 0, truth > 0), "f1": object_scores_3d(pred, truth)["f1"],
            "split_share": split_share(pred, truth)}


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig
    from napari_tower.data import from_array
    from napari_tower.segment import Predictor, finetune
    from napari_tower.segment.instances import instances_from_probabilities
    from napari_tower.segment.retrain3d import predict_volumes

    shape = (args.z, args.size, args.size)
    image, labels = spheres(shape, args.objects, 1000 + seed)
    test_image, test_labels = spheres(shape, args.objects, 2000 + seed)
    slices = list(args.painted)
    painted = np.zeros_like(labels)
    painted[slices] = labels[slices]
    out: dict[str, dict[str, float]] = {}

    def cfg(dims: str, batch: int, head: str = "boundary") -> FinetuneConfig:
        return FinetuneConfig(steps=args.steps, batch=batch, lr=3e-3, seed=seed, val_every=0, checkpoint_every=0,
                              target="instance", instance_head=head, device="cpu",
                              data=DataConfig(patch=args.patch, patch_z=args.patch_z),
                              model=ModelConfig(base=args.base, depth=2, dims=dims))

    pcfg = PredictConfig(device="cpu", instances=True)
    for arm, head in (("3d", "boundary"), ("3d capped", "capped")):
        if arm not in args.arms:
            continue
        t0 = time.perf_counter()
        model3d = finetune([from_array(image, "train", axes="ZYX")], [painted], cfg("3d", args.batch, head)).checkpoint
        t3 = time.perf_counter() - t0
        pred3d = predict_volumes(Predictor(model3d, pcfg), from_array(test_image, axes="ZYX"))
        out[arm] = {**scores(pred3d.labels, test_labels), "train_s": t3}
        if model3d.postprocess:
            out[arm]["seed_threshold"] = float(model3d.postprocess["seed_threshold"])
    if not {"2d planes", "2d+3d ws"} & set(args.arms):
        return out

    t0 = time.perf_counter()
    planes = from_array(image[slices], "train planes", axes="ZYX")
    model2d = finetune([planes], [painted[slices]], cfg("2d", args.batch * args.patch_z)).checkpoint
    t2 = time.perf_counter() - t0
    pred2d = Predictor(model2d, pcfg).predict(from_array(test_image, axes="ZYX"))
    # Plane-by-plane ids restart at 1 on every plane; made distinct, as objects of independent planes are.
    offsets = np.cumsum([0, *(int(p.max()) for p in pred2d.labels[:-1])])[:, None, None]
    per_plane = np.where(pred2d.labels > 0, pred2d.labels + offsets, 0)
    if "2d planes" in args.arms:
        out["2d planes"] = {**scores(per_plane, test_labels), "train_s": t2}
    probs = np.moveaxis(pred2d.probabilities, 1, 0)  # (K, Z, Y, X)
    fg = np.where(probs.argmax(0) > 0, 1.0 - probs[0], 0.0).astype(np.float32)
    stacked = instances_from_probabilities(fg, probs[2], min_size=PredictConfig().min_size)
    if "2d+3d ws" in args.arms:
        out["2d+3d ws"] = {**scores(stacked, test_labels), "train_s": t2}
    return out


def main() -> None:
    from napari_tower.stats import compare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=2, help="3D patches per step (2D: batch x patch_z planes)")
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--patch-z", type=int, default=8)
    ap.add_argument("--base", type=int, default=8)
    ap.add_argument("--z", type=int, default=32)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--objects", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=["3d", "2d planes", "2d+3d ws"])
    ap.add_argument("--reference", choices=ARMS, default="3d", help="the arm every other is compared with")
    ap.add_argument("--painted", type=int, nargs="+", default=list(PAINTED), help="the slices whose ids are painted")
    ap.add_argument("--out", type=Path, default=Path("sparse3d"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {seed: run_seed(seed, args) for seed in range(args.seeds)}
    arms = [args.reference] + [a for a in next(iter(runs.values())) if a != args.reference]
    summary: dict = {"machine": f"{cpu_name()}, {args.threads} torch thread(s)",
                     "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "mean": {}, "compare": {}}
    for arm in arms:
        summary["mean"][arm] = {k: float(np.mean([runs[s][arm][k] for s in runs])) for k in runs[0][arm]}
    base = args.reference
    for other in arms[1:]:
        # Higher is better for every compared score: the split share enters as its complement, the share kept whole.
        for metric, value in (("dice", lambda r: r["dice"]), ("f1", lambda r: r["f1"]),
                              ("kept_share", lambda r: 1.0 - r["split_share"])):
            c = compare({s: [value(runs[s][base])] for s in runs}, {s: [value(runs[s][other])] for s in runs},
                        (base, other))
            summary["compare"][f"{base} - {other}: {metric}"] = c.as_dict()
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    for arm, m in summary["mean"].items():
        print(f"{arm:10s} " + "  ".join(f"{k} {v:.3f}" for k, v in m.items()))
    for name, c in summary["compare"].items():
        print(f"{name}: {c['mean_diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] {c['verdict']}")


if __name__ == "__main__":
    main()
