"""Instance heads at an equal step budget: shape-aware heads against boundary + watershed (issue 20).

For each data set, label budget (1, 2, 5 labelled images or a percentage of the training pool, drawn by seed
from the training split of benchmarks/corpus.py) and seed, every arm fine-tunes from the same pretrained
encoder+decoder (the built-in generalist unless --init) for the same number of steps, with the same patches:

- boundary: foreground + 2-px inner boundary classes, seeded watershed (the product before issue 20);
- distance: normalised distance-to-edge regression, seeds above a threshold, watershed;
- stardist: radial distances + object probability, polygons + NMS.

Shape heads tune their post-processing on the labelled training images after fine-tuning (never on test
images). Scores per test image: object F1 at IoU 0.5, AP over IoU 0.5..0.9 (DSB2018 style) and foreground
Dice. Verdicts at the seed level (`napari_tower.stats.compare`), each head against boundary.

Only core dependencies (torch, numpy, scipy, scikit-image, tifffile): the data root is $NAPARI_TOWER_SHARED
(holding data/<set>/...), so a packed copy of the shared folder runs anywhere. Resumable: finished cells are
kept in OUT/results.json and skipped on a rerun.

    python benchmarks/bench_instances.py --datasets dsb2018 --labelled 10% 5 --seeds 3 --steps 300 \
        --workers 2 --device cpu --out docs/benchmarks/instances
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name, keep_run_cpus

ARMS = ("boundary", "distance", "capped", "stardist", "capped4", "capped10")
# capped4 / capped10: the capped head with its cap at 4 or 10 px instead of CAP_PX (a sensitivity check)
DATASETS = ("dsb2018", "usiigaci_phase", "sbiad634_ganglioneuroblastoma", "dsb2018_stage1_test")


# ----------------------------------------------------------------------------- data


def _tif(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path))


@lru_cache(maxsize=4)
def load_split(name: str, max_test: int) -> tuple[list, list]:
    """(train, test) lists of (grayscale float32 image, int32 instance labels) of one shared data set.

    dsb2018, usiigaci_phase and sbiad634 use benchmarks/corpus.py's splits (grayscale DSB images only, as the
    generalist is single-channel); dsb2018_stage1_test has none of its own, so its images are split 50/50 by a
    hash of their id (the same hash corpus.py uses for dsb2018), grayscale images only.
    """
    from corpus import SHARED, _hash_share, _rows, entries, read_grayscale

    if name == "dsb2018_stage1_test":
        d = SHARED / name
        rows = [r for r in _rows(d) if r.get("grayscale", "1") == "1"]
        pairs = [(r["id"], d / "images" / f"{r['id']}.tif", d / "masks" / f"{r['id']}.tif") for r in rows]
        train = [(read_grayscale(i), _tif(m).astype(np.int32)) for rid, i, m in pairs if _hash_share(rid) >= 0.5]
        test = [(read_grayscale(i), _tif(m).astype(np.int32)) for rid, i, m in pairs if _hash_share(rid) < 0.5]
        return train, test[:max_test]
    rows = [e for e in entries() if e.dataset == name and e.mask is not None]
    if name == "dsb2018":
        rows = [e for e in rows if _tif(e.image).ndim == 2]
    train = [(read_grayscale(e.image), _tif(e.mask).astype(np.int32)) for e in rows if not e.test]
    test = [(read_grayscale(e.image), _tif(e.mask).astype(np.int32)) for e in rows if e.test]
    return train, test[:max_test]


def labelled_subset(n_train: int, budget: str, seed: int) -> list[int]:
    """Indices of the labelled training images: `budget` is a count ("5") or a share of the pool ("10%")."""
    k = math.ceil(float(budget[:-1]) / 100 * n_train) if budget.endswith("%") else int(budget)
    k = min(max(k, 1), n_train)
    return sorted(np.random.default_rng([seed, k]).choice(n_train, k, replace=False).tolist())


# ----------------------------------------------------------------------------- one cell


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def run_cell(dataset: str, budget: str, seed: int, arm: str, steps: int, patch: int, batch: int, device: str,
             max_test: int, init: str | None, threads: int, grid: bool = False, models: Path | None = None,
             tta: int = 1) -> dict:
    """Fine-tune one arm on the labelled subset and score it on the test images. With `models`, a folder, the
    fine-tuned model is saved there, or loaded from there instead of trained when a previous run saved it.
    `tta` > 1 predicts with test-time flips, and a shape head's post-processing is tuned again on the labelled
    images predicted the same way (as fine-tuning would have tuned it with that setting)."""
    import torch

    from napari_tower.config import DataConfig, FinetuneConfig, PredictConfig
    from napari_tower.data import from_array
    from napari_tower.segment import Predictor
    from napari_tower.segment.metrics import average_precision, dice, object_scores
    from napari_tower.segment.shape_heads import CAP_PX, CappedDistanceHead

    if threads:
        torch.set_num_threads(threads)
    head = arm
    CappedDistanceHead.cap_px = CAP_PX  # a worker process runs many cells: reset what a previous one set
    if arm.startswith("capped") and arm != "capped":
        head, CappedDistanceHead.cap_px = "capped", float(arm[len("capped"):])
    train, test = load_split(dataset, max_test)
    chosen = labelled_subset(len(train), budget, seed)
    # Images smaller than the patch would shrink it for every arm alike; finetune picks min(patch, image side).
    images = [from_array(train[i][0][None], f"train{i}", axes="ZYX") for i in chosen]
    labels = [train[i][1][None] for i in chosen]
    cfg = FinetuneConfig(steps=steps, batch=batch, seed=seed, device=device, target="instance", instance_head=head,
                         val_fraction=0.0, val_every=0, checkpoint_every=0, data=DataConfig(patch=patch))
    saved = models / f"{dataset}-{budget.replace('%', 'pct')}-s{seed}-{arm}-{steps}steps.pt" if models else None
    model, train_s = load_or_finetune(saved, images, labels, cfg, init)
    if tta > 1 and model.instance_head not in (None, "boundary"):
        from napari_tower.segment.finetune import tune_on_labelled
        from napari_tower.segment.instance_heads import head_for

        items = [(k, 0, lab, None) for k, lab in enumerate(labels)]
        model.postprocess = tune_on_labelled(model, head_for(model.instance_head), images, items, False, device,
                                             tta=tta)
    predictor = Predictor(model, PredictConfig(device=device, instances=True, tta=tta))
    f1, ap, dsc, test_maps = [], [], [], []
    t1 = time.perf_counter()
    for k, (image, truth) in enumerate(test):
        prediction = predictor.predict(from_array(image[None], f"test{k}", axes="ZYX"))
        pred = prediction.labels[0]
        f1.append(object_scores(pred, truth)["f1"])
        ap.append(average_precision(pred, truth))
        dsc.append(dice(pred > 0, truth > 0))
        if predictor.head is not None and grid:
            test_maps.append(prediction.probabilities[0])
    predict_s = time.perf_counter() - t1
    run = {"dataset": dataset, "budget": budget, "seed": seed, "arm": arm, "labelled": chosen, "f1": f1, "ap": ap,
           "dice": dsc, "postprocess": model.postprocess, "steps": steps,
           "train_s": train_s, "predict_s": predict_s, "tta": tta}
    if predictor.head is not None and grid:
        train_maps = [predictor.predict(im).probabilities[0] for im in images]
        run["grid"] = grid_scores(predictor.head, train_maps, [lab[0] for lab in labels], test_maps,
                                  [truth for _, truth in test])
    return run


def load_or_finetune(saved: Path | None, images: list, labels: list, cfg, init: str | None):
    """(model, training seconds) of one cell: loaded from `saved` when an earlier run saved it there (seconds None),
    else fine-tuned and, when `saved` is given, saved there."""
    from napari_tower.model_bundle import ModelBundle
    from napari_tower.segment import finetune

    if saved is not None and saved.exists():
        return ModelBundle.load(saved), None
    t0 = time.perf_counter()
    model = finetune(images, labels, cfg, init=init).checkpoint
    train_s = time.perf_counter() - t0
    if saved is not None:
        model.save(saved)
    return model, train_s


def grid_scores(head, train_maps: list, train_truths: list, test_maps: list, test_truths: list) -> list[dict]:
    """Every post-processing grid point of a shape head: its pooled F1 on the labelled images (what tuning
    sees) and its F1 per test image, so tuning rules can be compared afterwards without retraining
    (`analyse_tuning.py`). Test images are decoded here only for that record, never to choose parameters."""
    from napari_tower.segment.metrics import object_scores
    from napari_tower.segment.shape_training import decoded_grid, score_postprocess_grid

    train = score_postprocess_grid(head, train_maps, train_truths)
    test = [[object_scores(labels, truth)["f1"] for labels, truth in zip(decoded, test_truths)]
            for _, decoded in decoded_grid(head, test_maps)]  # the same grid order as `train`
    return [{"params": params, "train_f1": f1, "test_f1": f1s} for (params, f1), f1s in zip(train, test)]


def _key(dataset: str, budget: str, seed: int, arm: str) -> str:
    return f"{dataset}|{budget}|{seed}|{arm}"


# ----------------------------------------------------------------------------- summary


def write_summary(runs: list[dict], out: Path) -> list[dict]:
    """Mean scores per arm and seed-level comparisons of each shape head against boundary, as Markdown + JSON."""
    from napari_tower.stats import compare

    lines = ["| data set | labelled | arm | seeds | F1@0.5 | AP 0.5..0.9 | Dice | Δ F1 vs boundary (points) | 95% CI | "
             "paired t p | verdict | Δ Dice (points) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for dataset, budget in sorted({(r["dataset"], r["budget"]) for r in runs}):
        group = [r for r in runs if r["dataset"] == dataset and r["budget"] == budget]
        by_arm = {arm: {r["seed"]: r for r in group if r["arm"] == arm} for arm in ARMS}
        for arm, seeds in by_arm.items():
            if not seeds:
                continue
            means = {m: [float(np.mean(r[m])) for r in seeds.values()] for m in ("f1", "ap", "dice")}
            row = {"dataset": dataset, "budget": budget, "arm": arm, "seeds": len(seeds),
                   **{m: float(np.mean(v)) for m, v in means.items()},
                   **{f"{m}_sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for m, v in means.items()}}
            cells = ["", "", "", "", ""]
            base = by_arm["boundary"]
            if arm != "boundary" and set(seeds) & set(base):
                c = compare({s: r["f1"] for s, r in seeds.items()}, {s: r["f1"] for s, r in base.items()},
                            names=(arm, "boundary"))
                d = compare({s: r["dice"] for s, r in seeds.items()}, {s: r["dice"] for s, r in base.items()},
                            names=(arm, "boundary"))
                row["vs_boundary_f1"], row["vs_boundary_dice"] = c.as_dict(), d.as_dict()
                cells = [f"{c.mean_diff * 100:+.1f}", f"[{c.ci_low * 100:+.1f}, {c.ci_high * 100:+.1f}]",
                         f"{c.paired_t_p:.3g}", c.verdict.split(" (")[0], f"{d.mean_diff * 100:+.1f}"]
            summary.append(row)
            lines.append(f"| {dataset} | {budget} | {arm} | {len(seeds)} | {row['f1']:.3f} ± {row['f1_sd']:.3f} | "
                         f"{row['ap']:.3f} | {row['dice']:.3f} | " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))
    return summary


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--labelled", nargs="+", default=["1", "2", "5", "10%"],
                        help="labelled images per run: counts, or shares of the training pool such as 10%%")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=1000, help="fine-tuning steps per arm (equal for all)")
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (each with torch threads 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads with --workers 1 (0: torch's default)")
    parser.add_argument("--max-test", type=int, default=50, help="test images per data set (the first ones)")
    parser.add_argument("--init", help="pretrained checkpoint to start from (default: the built-in generalist; "
                        "'none': random initialisation)")
    parser.add_argument("--grid", action="store_true",
                        help="shape heads: also record every post-processing grid point's training and test F1 "
                             "(analyse_tuning.py; doubles a CPU run's time)")
    parser.add_argument("--models", type=Path,
                        help="folder of fine-tuned models, one per cell: saved there, and loaded instead of trained "
                             "when there (to score the same models on more test images; diagnose_instances.py "
                             "--model reads one)")
    parser.add_argument("--tta", type=int, default=1, choices=(1, 4, 8),
                        help="test-time flips at prediction (PredictConfig.tta); shape heads are tuned again with it")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.models:
        args.models.mkdir(parents=True, exist_ok=True)
    init = args.init
    if init is None:
        from napari_tower.generalist import generalist_path

        init = str(generalist_path())
    elif init == "none":
        init = None
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    stored = json.loads(results.read_text()) if results.exists() else {"meta": {}, "runs": []}
    runs: list[dict] = keep_run_cpus(stored["runs"], stored["meta"].get("cpu"))
    done = {_key(r["dataset"], r["budget"], r["seed"], r["arm"]) for r in runs}
    todo = [(d, b, s, a) for d in args.datasets for b in args.labelled for s in range(args.seeds) for a in args.arms
            if _key(d, b, s, a) not in done]
    meta = {"steps": args.steps, "patch": args.patch, "batch": args.batch, "device": args.device,
            "max_test": args.max_test, "init": "generalist" if args.init is None else args.init,
            "cpu": cpu_name(), "workers": args.workers,
            "shared": os.environ.get("NAPARI_TOWER_SHARED", "default"), "tta": args.tta}

    def record(run: dict) -> None:
        run["cpu"] = meta["cpu"]
        runs.append(run)
        trained = "loaded" if run["train_s"] is None else f"{run['train_s']:.0f} s train"
        print(f"{run['dataset']} {run['budget']} seed={run['seed']} {run['arm']:<9} F1 {np.mean(run['f1']):.3f} "
              f"AP {np.mean(run['ap']):.3f} Dice {np.mean(run['dice']):.3f} ({trained}, "
              f"{run['predict_s']:.0f} s predict) {run['postprocess']}", flush=True)
        tmp = results.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
        tmp.replace(results)  # atomic: an interrupted run never leaves a broken results.json

    common = (args.steps, args.patch, args.batch, args.device, args.max_test, init)
    if args.workers <= 1:
        for cell in todo:
            record(run_cell(*cell, *common, args.threads, args.grid, args.models, args.tta))
    else:
        import multiprocessing

        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init) as pool:
            futures = [pool.submit(run_cell, *cell, *common, 1, args.grid, args.models, args.tta) for cell in todo]
            for future in as_completed(futures):
                record(future.result())
    write_summary(runs, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
