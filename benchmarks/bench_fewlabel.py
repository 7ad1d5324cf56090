"""Few-label benchmark at an equal CPU budget: does the default pipeline beat random initialisation?

For each data set, label budget (1, 2, ... labelled images, drawn by seed from the training split of
benchmarks/corpus.py) and seed, every arm gets the same wall-time budget for everything after install:

- scratch: fine-tune from random initialisation for the whole budget;
- generalist: fine-tune from the built-in generalist checkpoint for the whole budget (no adaptation);
- default: the product's default pipeline: generalist -> TOWER adaptation on the data set's images
  (`--adapt-share` of the budget) -> fine-tuning for the rest;
- tower: TOWER pretrained from scratch on the data set's images for half the budget, then fine-tuned.

Adaptation and TOWER pretraining see the images a user would have open: the training pool and the test images,
without their labels. Scores: foreground Dice per test image (ISBI: membrane Dice, the boundary-aware metric,
since interior Dice saturates). Verdicts at the seed level (`napari_tower.stats.compare`).

    python benchmarks/bench_fewlabel.py --datasets dsb2018 usiigaci_phase --labelled 1 2 --seeds 5 \
        --budget 300 --out docs/benchmarks/fewlabel
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import SHARED, entries, read_grayscale

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig, PretrainConfig
from napari_tower.data import from_array
from napari_tower.segment import Predictor, finetune
from napari_tower.segment.metrics import dice
from napari_tower.stats import compare
from napari_tower.train import pretrain

ARMS = ("scratch", "generalist", "default", "tower")


@dataclass
class Split:
    name: str
    train: list[tuple[np.ndarray, np.ndarray]]  # (image, labels) planes
    test: list[tuple[np.ndarray, np.ndarray]]
    membrane: bool = False  # score the boundary class (ISBI) instead of the foreground


def _tif(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path))


def load_split(name: str, max_test: int) -> Split:
    """Labelled training pool and test images of one shared data set (grayscale planes)."""
    if name == "isbi2012_em":
        vol, lab = _tif(SHARED / name / "train-volume.tif"), _tif(SHARED / name / "train-labels.tif")
        # Labels: 255 = cell interior, 0 = membrane. Slices 20-29 held out (adjacent slices are correlated).
        pairs = [(vol[z].astype(np.float32), (lab[z] > 0).astype(np.int32)) for z in range(vol.shape[0])]
        return Split(name, pairs[:20], pairs[20:][:max_test], membrane=True)
    if name == "sstem_drosophila_vnc":
        folder = SHARED / name
        files = sorted((folder / "masks").glob("*.tif"))
        pairs = [(read_grayscale(folder / "images" / f.name), _tif(f).astype(np.int32)) for f in files]
        # Split by z-block: the last quarter of the labelled sections is the test block.
        cut = len(pairs) * 3 // 4
        return Split(name, pairs[:cut], pairs[cut:][:max_test])
    rows = [e for e in entries() if e.dataset == name and e.mask is not None]
    if name.startswith("dsb2018"):
        # grayscale (fluorescence) images: the generalist is 1-channel
        rows = [e for e in rows if _tif(e.image).ndim == 2]
    def pair(e):
        return read_grayscale(e.image), _tif(e.mask).astype(np.int32)
    train = [pair(e) for e in rows if not e.test]
    test = [pair(e) for e in rows if e.test][:max_test]
    return Split(name, train, test)


def _images(planes: list[np.ndarray]) -> list:
    return [from_array(p[None], f"plane{i}", axes="ZYX") for i, p in enumerate(planes)]


def _score(split: Split, seg) -> list[float]:
    predictor = Predictor(seg, PredictConfig(device="cpu", instances=False))
    scores = []
    for image, truth in split.test:
        pred = predictor.predict(from_array(image[None], "test", axes="ZYX")).labels[0]
        if split.membrane:
            scores.append(dice(pred == 0, truth == 0))  # membrane pixels
        else:
            scores.append(dice(pred > 0, truth > 0))
    return scores


def run_arm(arm: str, split: Split, labelled: list[int], seed: int, budget_s: float, adapt_share: float,
            generalist: str | None, model: ModelConfig, patch: int) -> dict:
    images = _images([split.train[i][0] for i in labelled])
    labels = [split.train[i][1][None] for i in labelled]
    unlabelled = _images([p[0] for p in split.train] + [p[0] for p in split.test])
    t0 = time.perf_counter()
    init = None
    pre_history: dict = {}
    pre_s = 0.0
    if arm in ("default", "tower"):
        share = adapt_share if arm == "default" else 0.5
        pcfg = PretrainConfig(method="tower", steps=1, minutes=budget_s * share / 60, batch=16, seed=seed,
                              device="cpu", val_every=0, checkpoint_every=0, data=DataConfig(patch=patch),
                              model=ModelConfig(base=model.base, depth=model.depth))
        result = pretrain(unlabelled, pcfg, init=generalist if arm == "default" else None)
        init, pre_history = result.checkpoint, result.checkpoint.history
        pre_s = time.perf_counter() - t0
    elif arm == "generalist":
        init = generalist
    left = max(1.0, budget_s - (time.perf_counter() - t0))
    fcfg = FinetuneConfig(steps=1, minutes=left / 60, batch=8, seed=seed, device="cpu", val_every=0,
                          checkpoint_every=0, data=DataConfig(patch=patch),
                          model=ModelConfig(base=model.base, depth=model.depth))
    tuned = finetune(images, labels, fcfg, init=init)
    wall = time.perf_counter() - t0
    scores = _score(split, tuned.checkpoint)
    return {"arm": arm, "seed": seed, "labelled": labelled, "scores": scores, "mean": float(np.mean(scores)),
            "wall_s": wall, "pretrain_s": pre_s, "finetune_steps": tuned.last.step,
            "pretrain_loss": {k: v[-1] for k, v in pre_history.items() if v and k != "step"}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["dsb2018", "usiigaci_phase", "sbiad634_ganglioneuroblastoma"])
    parser.add_argument("--labelled", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per arm, everything after install")
    parser.add_argument("--adapt-share", type=float, default=0.3, help="share of the budget the default adapts for")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--generalist", help="generalist checkpoint (default: the one shipped in the package)")
    parser.add_argument("--max-test", type=int, default=20)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    generalist = args.generalist
    if generalist is None and {"generalist", "default"} & set(args.arms):
        from napari_tower.generalist import generalist_path

        generalist = str(generalist_path())
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    results = args.out / "results.json"
    if results.exists():  # resume: skip what is done
        runs = json.loads(results.read_text())["runs"]
    done = {(r["dataset"], r["n_labelled"], r["arm"], r["seed"]) for r in runs}
    model = ModelConfig()
    for name in args.datasets:
        split = load_split(name, args.max_test)
        for k in args.labelled:
            for seed in range(args.seeds):
                labelled = sorted(np.random.default_rng([seed, k]).choice(len(split.train), k, replace=False).tolist())
                for arm in args.arms:
                    if (name, k, arm, seed) in done:
                        continue
                    run = run_arm(arm, split, labelled, seed, args.budget, args.adapt_share, generalist, model,
                                  args.patch)
                    run.update(dataset=name, n_labelled=k)
                    runs.append(run)
                    print(f"{name} k={k} seed={seed} {arm:<10} Dice {run['mean']:.4f} ({run['wall_s']:.0f} s, "
                          f"{run['finetune_steps']} fine-tune steps)", flush=True)
                    meta = {"budget_s": args.budget, "adapt_share": args.adapt_share, "patch": args.patch,
                            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
                    results.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    write_summary(runs, args.out)
    return 0


def write_summary(runs: list[dict], out: Path) -> None:
    """Mean Dice per arm and seed-level comparisons of each arm against scratch, per data set and label budget."""
    lines = ["| data set | labelled images | arm | Dice (mean ± sd over seeds) | Δ vs scratch (points) | 95% CI | "
             "paired t p | verdict |", "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], r["n_labelled"]) for r in runs})
    summary = []
    for name, k in keys:
        group = [r for r in runs if r["dataset"] == name and r["n_labelled"] == k]
        by_arm = {arm: {r["seed"]: r["scores"] for r in group if r["arm"] == arm} for arm in ARMS}
        for arm, seeds in by_arm.items():
            if not seeds:
                continue
            means = [float(np.mean(s)) for s in seeds.values()]
            row = {"dataset": name, "n_labelled": k, "arm": arm, "mean": float(np.mean(means)),
                   "sd": float(np.std(means, ddof=1)) if len(means) > 1 else 0.0, "seeds": len(means)}
            cells = ["", "", "", ""]
            if arm != "scratch" and by_arm["scratch"] and set(seeds) & set(by_arm["scratch"]):
                c = compare(seeds, by_arm["scratch"], names=(arm, "scratch"))
                row["vs_scratch"] = c.as_dict()
                cells = [f"{c.mean_diff * 100:+.2f}", f"[{c.ci_low * 100:+.2f}, {c.ci_high * 100:+.2f}]",
                         f"{c.paired_t_p:.3g}", c.verdict.split(" (")[0]]
            summary.append(row)
            lines.append(f"| {name} | {k} | {arm} | {row['mean']:.4f} ± {row['sd']:.4f} | " + " | ".join(cells) + " |")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
