"""3D against 2D per plane, at an equal CPU budget, from two painted slices (issue 17).

    python benchmarks/bench_volumes.py [--sets isbi2012_em sstem_drosophila_vnc] [--seeds 0 1 2]
        [--minutes 2.5] [--threads 1] [--painted 2] [--crop 512] [--patch-3d 128] [--patch-z 4] [--batch-3d 2]
        [--out results.json]

For each volume a user paints `--painted` slices (evenly spaced, away from the ends) and leaves every other
slice unannotated (0). Two arms get the same painted labels and the same wall-clock budget of fine-tuning
(`FinetuneConfig.minutes`), from random initialisation, through the core Python API:

* **2d**: the painted planes as 2D training images (the default model, patch 128, batch 8), prediction plane
  by plane;
* **3d**: the whole volume with sparse labels (`ModelConfig.dims = "3d"`, the volume's voxel size, 3D
  patches), prediction of the volume in 3D.

Scores are on the unpainted slices only:

* ``isbi2012_em`` (30 x 512 x 512, 4 x 4 x 50 nm; labels: membrane 0, cell 255): membrane Dice, and the
  variation of information (split + merge) and adapted Rand error of the cells (2D connected components of the
  non-membrane class, per slice), where interior Dice saturates;
* ``sstem_drosophila_vnc`` stack1 (20 x 1024 x 1024, 4.6 x 4.6 x 50 nm; mitochondria): foreground Dice, and
  object consistency across z: true mitochondria are the 3D connected components of the mask over the
  unpainted slices; F1@0.5 of predicted 3D components against them, and the share of true 3D objects whose
  predicted component changes between neighbouring slices (`split_share`).

Verdicts are paired over seeds (`napari_tower.stats.compare`). CPU figures depend on the machine and its
load: the script records `lscpu`'s model name and the load average at the start of each run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from machine import cpu_name, keep_run_cpus

from napari_tower.config import FinetuneConfig, PredictConfig
from napari_tower.data import from_array
from napari_tower.segment import Predictor, finetune
from napari_tower.stats import compare

SHARED = Path(os.environ.get("NAPARI_TOWER_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
SETS = ("isbi2012_em", "sstem_drosophila_vnc")
LOWER_IS_BETTER = {"voi", "arand", "split_share"}
VOXEL_NM = {"isbi2012_em": (50.0, 4.0, 4.0), "sstem_drosophila_vnc": (50.0, 4.6, 4.6)}


def load(name: str, crop: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(volume, truth) as (Z, Y, X); truth is 1 for the class scored (ISBI: membrane; ssTEM: mitochondria)."""
    root = SHARED / name
    if name == "isbi2012_em":
        image = tifffile.imread(root / "train-volume.tif")
        truth = (tifffile.imread(root / "train-labels.tif") == 0).astype(np.uint8)
    else:
        with open(root / "index.csv", newline="") as fh:
            rows = sorted((r for r in csv.DictReader(fh) if r["stack"] == "1"), key=lambda r: int(r["z"]))
        image = np.stack([tifffile.imread(root / "images" / r["file"]) for r in rows])
        truth = np.stack([(tifffile.imread(root / "masks" / r["file"]) > 0) for r in rows]).astype(np.uint8)
    if crop:
        y0, x0 = (image.shape[1] - crop) // 2, (image.shape[2] - crop) // 2
        image, truth = image[:, y0:y0 + crop, x0:x0 + crop], truth[:, y0:y0 + crop, x0:x0 + crop]
    return np.ascontiguousarray(image), np.ascontiguousarray(truth)


def painted_slices(depth: int, n: int) -> list[int]:
    """`n` evenly spaced slices, none at either end (a user paints inside the stack)."""
    return [round(depth * (k + 1) / (n + 1)) for k in range(n)]


def sparse_labels(truth: np.ndarray, painted: list[int]) -> np.ndarray:
    """The user's painting: on painted slices 1 = background, 2 = the class; 0 (unannotated) elsewhere."""
    labels = np.zeros(truth.shape, np.uint8)
    labels[painted] = truth[painted] + 1
    return labels


def train(arm: str, image: np.ndarray, labels: np.ndarray, painted: list[int], voxel: tuple[float, ...],
          args: argparse.Namespace, seed: int):
    cfg = FinetuneConfig(steps=1_000_000, minutes=args.minutes, seed=seed, target="sparse", val_fraction=0.0)
    if arm == "2d":
        volume = from_array(image[painted], "painted planes", axes="ZYX")
        return finetune([volume], [labels[painted]], cfg).checkpoint
    cfg.model.dims = "3d"
    cfg.model.voxel_size = tuple(v / min(voxel) for v in voxel)
    cfg.data.patch, cfg.data.patch_z, cfg.batch = args.patch_3d, args.patch_z, args.batch_3d
    return finetune([from_array(image, "volume", axes="ZYX")], [labels], cfg).checkpoint


def cells(membrane: np.ndarray) -> np.ndarray:
    from skimage.measure import label

    return label(membrane == 0, connectivity=1)


def isbi_scores(pred_class: np.ndarray, truth: np.ndarray, slices: list[int]) -> dict[str, float]:
    """Membrane Dice and cell VOI / adapted Rand error over the scored slices (pred_class: 1 = membrane)."""
    from skimage.metrics import adapted_rand_error, variation_of_information

    p, t = pred_class[slices] > 0, truth[slices] > 0
    voi, arand = [], []
    for z in slices:
        pc, tc = cells(pred_class[z]), cells(truth[z])
        split, merge = variation_of_information(tc, pc, ignore_labels=(0,))
        voi.append(split + merge)
        arand.append(adapted_rand_error(tc, pc, ignore_labels=(0,))[0])
    return {"membrane_dice": float(2 * (p & t).sum() / max(1, p.sum() + t.sum())),
            "voi": float(np.mean(voi)), "arand": float(np.mean(arand))}


def split_share(pred: np.ndarray, truth: np.ndarray) -> float:
    """Share of true 3D objects (spanning >= 2 slices) whose majority predicted id changes between slices."""
    split = spanning = 0
    for obj in np.unique(truth[truth > 0]):
        ids = []
        for z in np.flatnonzero((truth == obj).any(axis=(1, 2))):
            inside = pred[z][truth[z] == obj]
            inside = inside[inside > 0]
            ids.append(int(np.bincount(inside).argmax()) if inside.size else 0)
        if len(ids) < 2:
            continue
        spanning += 1
        found = [i for i in ids if i]
        split += len(set(found)) > 1
    return split / max(1, spanning)


def sstem_scores(pred_class: np.ndarray, truth: np.ndarray, slices: list[int]) -> dict[str, float]:
    """Mitochondria Dice, and 3D object F1@0.5 and split share over runs of consecutive scored slices."""
    from skimage.measure import label

    from napari_tower.segment.metrics import object_scores

    p, t = pred_class[slices] > 0, truth[slices] > 0
    f1, splits, weights = [], [], []
    # 3D objects only exist across consecutive slices: score each run of unpainted slices as one block.
    runs = np.split(np.asarray(slices), np.flatnonzero(np.diff(slices) > 1) + 1)
    for run in runs:
        tl, pl = label(truth[run] > 0, connectivity=1), label(pred_class[run] > 0, connectivity=1)
        f1.append(object_scores(pl, tl)["f1"])
        splits.append(split_share(pl, tl))
        weights.append(len(run))
    return {"mito_dice": float(2 * (p & t).sum() / max(1, p.sum() + t.sum())),
            "f1_3d": float(np.average(f1, weights=weights)), "split_share": float(np.average(splits, weights=weights))}


def run(name: str, arm: str, seed: int, args: argparse.Namespace) -> dict:
    image, truth = load(name, args.crop)
    painted = painted_slices(len(image), args.painted)
    scored = [z for z in range(len(image)) if z not in painted]
    labels = sparse_labels(truth, painted)
    load_avg = os.getloadavg()[0]
    t0 = time.perf_counter()
    model = train(arm, image, labels, painted, VOXEL_NM[name], args, seed)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = Predictor(model, PredictConfig()).predict(from_array(image, name, axes="ZYX")).labels
    predict_s = time.perf_counter() - t0
    pred_class = (pred == 1).astype(np.uint8)  # class ids: 0 = painted background, 1 = the painted class
    score = isbi_scores if name == "isbi2012_em" else sstem_scores
    scores = score(pred_class, truth, scored)
    record = {"set": name, "arm": arm, "seed": seed, "shape": list(image.shape), "painted": painted,
              "steps": int(model.step), "train_seconds": round(train_s, 1), "predict_seconds": round(predict_s, 1),
              "load_average": load_avg, **scores}
    print(json.dumps(record), flush=True)
    return record


def summarise(records: list[dict]) -> None:
    for name in sorted({r["set"] for r in records}):
        keys = ["membrane_dice", "voi", "arand"] if name == "isbi2012_em" else ["mito_dice", "f1_3d", "split_share"]
        for key in keys:
            # compare() calls the higher score better: errors (VOI, Rand error, split share) go in negated.
            sign = -1.0 if key in LOWER_IS_BETTER else 1.0
            by_arm = {arm: {r["seed"]: [sign * r[key]] for r in records if r["set"] == name and r["arm"] == arm}
                      for arm in ("3d", "2d")}
            if by_arm["3d"] and by_arm["2d"]:
                c = compare(by_arm["3d"], by_arm["2d"], ("3d", "2d"))
                m3 = sign * np.mean([v[0] for v in by_arm["3d"].values()])
                m2 = sign * np.mean([v[0] for v in by_arm["2d"].values()])
                lo, hi = sorted((sign * c.ci_low, sign * c.ci_high))
                print(f"{name} {key}: 3d {m3:.4f} vs 2d {m2:.4f}  diff {m3 - m2:+.4f} "
                      f"[{lo:+.4f}, {hi:+.4f}] p={c.paired_t_p:.3g} "
                      f"({c.n_seeds} seeds)  {c.verdict}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--arms", nargs="+", default=["3d", "2d"], choices=("3d", "2d"))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--minutes", type=float, default=2.5, help="fine-tuning wall time per arm")
    ap.add_argument("--painted", type=int, default=2, help="painted slices per volume")
    ap.add_argument("--crop", type=int, default=None, help="central Y/X crop (default: whole slices)")
    ap.add_argument("--patch-3d", type=int, default=128)
    ap.add_argument("--patch-z", type=int, default=4)
    ap.add_argument("--batch-3d", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench_volumes.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = cpu_name()
    stored = json.loads(args.out.read_text()) if args.out.exists() else {"records": []}
    records = keep_run_cpus(stored["records"], stored.get("cpu"))
    done = {(r["set"], r["arm"], r["seed"]) for r in records}
    # Seeds outermost, so a run stopped early still has every set and arm for the seeds it finished.
    for seed in args.seeds:
        for name in args.sets:
            for arm in args.arms:
                if (name, arm, seed) in done:
                    continue
                records.append({**run(name, arm, seed, args), "cpu": cpu})
                args.out.write_text(json.dumps({"cpu": cpu, "threads": args.threads, "args": {
                    k: str(v) for k, v in vars(args).items()}, "records": records}, indent=1))
    summarise(records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
