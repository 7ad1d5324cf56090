"""`napari-tower bench`: TOWER against its baselines, same U-Net, same data, same fine-tuning.

For each method and seed: pretrain on the training images (unlabelled), then
for each label fraction fine-tune on that seeded, nested share of the
training labels, predict the held-out images and score them. Writes
results.json (every cell, per-image scores), results.md (mean ± sd and paired
tests of TOWER against each baseline) and dice_vs_fraction.png.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig, PretrainConfig
from .data import Image, expand_inputs, from_array, read_image, read_labels
from .errors import TowerError

BENCH_METHODS = ("scratch", "genesis", "simclr", "byol", "pcrl", "tower", "tower-gen-only", "tower-con-only",
                 "tower-encoder-only")
# Variants that reuse another method's pretraining with a different transfer.
REUSES = {"tower-encoder-only": ("tower", ("encoder",))}


@dataclass
class Preset:
    fractions: tuple[float, ...]
    seeds: int
    pretrain_steps: int
    finetune_steps: int
    base: int
    depth: int
    patch: int
    batch: int
    methods: tuple[str, ...] = BENCH_METHODS


PRESETS = {
    # About 15 minutes on a 2-core CPU for ISBI.
    "quick": Preset(fractions=(0.1,), seeds=3, pretrain_steps=120, finetune_steps=150, base=8, depth=3, patch=96,
                    batch=8),
    # The whole grid, meant for a GPU (mixed precision on CUDA is on by default).
    "full": Preset(fractions=(0.01, 0.1, 1.0), seeds=5, pretrain_steps=3000, finetune_steps=1500, base=32, depth=4,
                   patch=128, batch=32),
}


@dataclass
class Dataset:
    train_images: list[Image]
    train_labels: list[np.ndarray]
    test_images: list[Image]
    test_labels: list[np.ndarray]
    description: str = ""


def _plane(im: Image, p: int) -> Image:
    return from_array(np.asarray(im.data[p: p + 1]), f"{im.source}[{p}]", axes="ZCYX")


def load_dataset(data: Sequence[str], labels: Sequence[str], test_planes: str | None = None,
                 test_fraction: float = 0.2, split_seed: int = 0, grayscale_only: bool = False) -> Dataset:
    """Pair images with labels and split them: given planes of a stack, or a seeded share of images."""
    image_paths, label_paths = expand_inputs(data), expand_inputs(labels)
    if len(image_paths) != len(label_paths):
        raise TowerError(f"{len(image_paths)} image(s) but {len(label_paths)} label file(s): give them in pairs")
    images, masks = [], []
    for ip, lp in zip(image_paths, label_paths):
        im = read_image(ip)
        if grayscale_only and im.channels != 1:
            continue
        lab = read_labels(lp)
        if lab.shape != (im.shape[0], *im.shape[2:]):
            raise TowerError(f"labels {lp} have shape {lab.shape}, image {ip} has {im.shape}")
        for p in range(im.shape[0]):
            images.append(_plane(im, p))
            masks.append(lab[p: p + 1])
    n = len(images)
    if test_planes:
        start, stop = (int(v) for v in test_planes.split(":"))
        test = set(range(start, min(stop, n)))
    else:
        order = np.random.default_rng(split_seed).permutation(n)
        test = set(order[: max(1, round(test_fraction * n))].tolist())
    train = [i for i in range(n) if i not in test]
    if not train or not test:
        raise TowerError("the split leaves no training or no test images: give more images or another split")
    return Dataset([images[i] for i in train], [masks[i] for i in train], [images[i] for i in sorted(test)],
                   [masks[i] for i in sorted(test)], f"{len(train)} train / {len(test)} test planes")


@dataclass
class Cell:
    method: str
    fraction: float
    seed: int
    mean: dict[str, float]
    pooled: dict[str, float]
    per_image_dice: list[float]
    pretrain_s: float
    finetune_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def run_grid(ds: Dataset, preset: Preset, out: Path, device: str = "auto", quiet: bool = False,
             instances: bool | None = None) -> list[Cell]:
    from .segment import Predictor, evaluate, finetune
    from .train import pretrain

    out.mkdir(parents=True, exist_ok=True)
    model = ModelConfig(base=preset.base, depth=preset.depth)
    data = DataConfig(patch=preset.patch)
    cells: list[Cell] = []
    pretrained: dict[tuple[str, int], tuple[dict[str, Any] | None, float]] = {}
    for seed in range(preset.seeds):
        for method in preset.methods:
            source, transfer = REUSES.get(method, (method, None))
            key = (source, seed)
            if key not in pretrained:
                t0 = time.perf_counter()
                if source == "scratch":
                    pretrained[key] = (None, 0.0)
                else:
                    cfg = PretrainConfig(method=source, steps=preset.pretrain_steps, batch=max(2, preset.batch),
                                         seed=seed, device=device, val_every=0, checkpoint_every=0, data=data,
                                         model=model)
                    ckpt = pretrain(ds.train_images, cfg).checkpoint
                    pretrained[key] = (ckpt, time.perf_counter() - t0)
            ckpt, pre_s = pretrained[key]
            for fraction in preset.fractions:
                t0 = time.perf_counter()
                fcfg = FinetuneConfig(steps=preset.finetune_steps, batch=preset.batch, seed=seed, device=device,
                                      fraction=fraction, val_every=max(1, preset.finetune_steps // 5),
                                      checkpoint_every=0, data=DataConfig(patch=preset.patch),
                                      model=ModelConfig(base=preset.base, depth=preset.depth))
                seg = finetune(ds.train_images, ds.train_labels, fcfg, init=ckpt, transfer=transfer).checkpoint
                fine_s = time.perf_counter() - t0
                predictor = Predictor(seg, PredictConfig(device=device, instances=seg.target == "instance"))
                preds = [predictor.predict(im).labels[0] for im in ds.test_images]
                truths = [lab[0] for lab in ds.test_labels]
                scores = evaluate(preds, truths, instances=instances)
                cell = Cell(method, fraction, seed, scores["mean"], scores["pooled"],
                            [row["dice"] for row in scores["images"]], pre_s, fine_s)
                cells.append(cell)
                if not quiet:
                    print(f"bench: {method:<19} fraction {fraction:<5} seed {seed}  Dice {cell.mean['dice']:.4f}  "
                          f"F1 {cell.mean.get('f1', float('nan')):.4f}  ({pre_s:.0f}+{fine_s:.0f} s)", flush=True)
    return cells


def _mean_sd(values: Sequence[float]) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.4f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.4f}"


def paired_tests(cells: list[Cell], reference: str = "tower") -> list[dict[str, Any]]:
    """TOWER minus each baseline at the seed level: paired over seed means, with a hierarchical bootstrap CI.

    Per-image Dice of one seed share that seed's training run; pooling them across seeds into one test would be
    pseudo-replication (see `stats.py`).
    """
    from .stats import compare

    rows = []
    fractions = sorted({c.fraction for c in cells})
    methods = [m for m in dict.fromkeys(c.method for c in cells) if m != reference]
    for fraction in fractions:
        ref = {c.seed: c.per_image_dice for c in cells if c.method == reference and c.fraction == fraction}
        for method in methods:
            other = {c.seed: c.per_image_dice for c in cells if c.method == method and c.fraction == fraction}
            if not set(ref) & set(other):
                continue
            result = compare(ref, other, names=("TOWER", "baseline"))
            rows.append({"fraction": fraction, "baseline": method, "dice_diff_points": result.mean_diff * 100,
                         "n_seeds": result.n_seeds, "seed_diffs_points": [d * 100 for d in result.seed_diffs],
                         "ci95_points": [result.ci_low * 100, result.ci_high * 100],
                         "paired_t_p": result.paired_t_p, "wilcoxon_p": result.wilcoxon_p,
                         "tower_wins": bool(result.mean_diff > 0), "verdict": result.verdict})
    return rows


def write_report(cells: list[Cell], out: Path, meta: dict[str, Any]) -> None:
    tests = paired_tests(cells)
    results = {"meta": meta, "cells": [asdict(c) for c in cells], "paired_tests": tests}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["# napari-tower benchmark\n", f"{meta.get('description', '')}\n",
             "| method | fraction | Dice (mean ± sd over seeds) | IoU | object F1@0.5 | seeds |",
             "|---|---|---|---|---|---|"]
    for fraction in sorted({c.fraction for c in cells}):
        for method in dict.fromkeys(c.method for c in cells):
            group = [c for c in cells if c.method == method and c.fraction == fraction]
            if not group:
                continue
            f1 = _mean_sd([c.mean["f1"] for c in group]) if "f1" in group[0].mean else "n/a"
            lines.append(f"| {method} | {fraction:g} | {_mean_sd([c.mean['dice'] for c in group])} | "
                         f"{_mean_sd([c.mean['iou'] for c in group])} | {f1} | {len(group)} |")
    lines += ["", "TOWER minus baseline at the seed level (one mean Dice per seed, paired over seeds; 95% interval "
              "from a hierarchical bootstrap over seeds, then test images):", "",
              "| fraction | baseline | Δ Dice (points) | 95% CI | seeds | paired t p | Wilcoxon p | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for t in tests:
        low, high = t["ci95_points"]
        lines.append(f"| {t['fraction']:g} | {t['baseline']} | {t['dice_diff_points']:+.2f} "
                     f"| [{low:+.2f}, {high:+.2f}] "
                     f"| {t['n_seeds']} | {t['paired_t_p']:.3g} | {t['wilcoxon_p']:.3g} | {t['verdict']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plot(cells, out / "dice_vs_fraction.png")


def _plot(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(c.method for c in cells))
    all_fractions = sorted({c.fraction for c in cells})

    def stats(method: str, fraction: float) -> tuple[float, float]:
        dice = [c.mean["dice"] for c in cells if c.method == method and c.fraction == fraction]
        return float(np.mean(dice)), float(np.std(dice))

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if len(all_fractions) == 1:
        # One label fraction: a line over fractions would be a single x; compare the methods side by side.
        fraction = all_fractions[0]
        means, sds = zip(*(stats(m, fraction) for m in methods))
        colours = ["tab:red" if m == "tower" else "tab:blue" for m in methods]
        ax.bar(range(len(methods)), means, yerr=sds, capsize=3, color=colours, alpha=0.8)
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
        low = min(m - s for m, s in zip(means, sds))
        ax.set_ylim(max(0.0, low - 0.02), min(1.0, max(m + s for m, s in zip(means, sds)) + 0.01))
        ax.set_ylabel(f"mean Dice on held-out images ({fraction * 100:g}% labels)")
    else:
        for method in methods:
            fractions = sorted({c.fraction for c in cells if c.method == method})
            means, sds = zip(*(stats(method, f) for f in fractions))
            ax.errorbar([f * 100 for f in fractions], means, yerr=sds, marker="o", capsize=3, label=method,
                        linewidth=2.5 if method == "tower" else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("labelled share of training images (%)")
        ax.set_ylabel("mean Dice on held-out images")
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def resolve_preset(name: str = "quick", **overrides: Any) -> Preset:
    """The preset `name` with the given fields replaced (None keeps the preset's value), checked.

    Raises TowerError for an unknown method or a value the configs it builds would refuse, before any
    data is read.
    """
    preset = Preset(**{**asdict(PRESETS[name]), **{k: v for k, v in overrides.items() if v is not None}})
    unknown = [m for m in preset.methods if m not in BENCH_METHODS]
    if unknown:
        raise TowerError(f"unknown method(s) {unknown}: choose from {', '.join(BENCH_METHODS)}")
    data, model = DataConfig(patch=preset.patch), ModelConfig(base=preset.base, depth=preset.depth)
    # The configs run_grid builds, fine-tuning first: its batch (pretraining uses at least 2) is the option's.
    FinetuneConfig(steps=preset.finetune_steps, batch=preset.batch, data=data, model=model).validate()
    PretrainConfig(steps=preset.pretrain_steps, batch=max(2, preset.batch), data=data, model=model).validate()
    return preset


__all__ = ["BENCH_METHODS", "PRESETS", "Cell", "Dataset", "Preset", "load_dataset", "paired_tests", "resolve_preset",
           "run_grid", "write_report"]
