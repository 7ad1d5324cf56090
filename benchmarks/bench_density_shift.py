"""Dense-to-sparse transfer (issue 21): fine-tune on the most crowded labelled image, predict the sparsest.

    python benchmarks/bench_density_shift.py [--sets dsb2018 usiigaci_phase sbiad634_ganglioneuroblastoma]
        [--seeds 0 1 2] [--steps 300] [--threads 2] [--sparse 4] [--init CKPT] [--out results.json]
        [--save-models DIR | --load-models DIR] [--jitter 0.2] [--zoom 1] [--device cpu] [--fp32]
        [--correct 3 --region 256]

For each labelled set in ../shared/data (or $NAPARI_TOWER_SHARED/data) the image with the highest
foreground share is the training image and the `--sparse` images with the lowest share (same modality and
channel count; DSB: grayscale fluorescence with >= 5 nuclei, so one-nucleus images do not decide the score)
are predicted. Fine-tuning and prediction use the defaults a user gets (FinetuneConfig and PredictConfig:
300 steps, batch 8, patch 128, base 16, random init, per-image normalisation), called through the core
Python API. Per image it records the true and predicted foreground share, the foreground Dice and the Dice
of an Otsu threshold on the same image (polarity chosen by the better Dice, which favours Otsu), and the
predicted share again with every normalised intensity shifted by +0.05 (`shift_share`: a model that keys on
the training image's absolute background level floods there).
Prints a per-set, per-seed summary and writes every raw number to `--out` as JSON.

`--correct K` adds what the product offers for a shift no single labelled image covers: the correct-and-retrain
loop on one sparse frame. The simulated user takes the sparse frame the model gets most wrong (largest share of
wrong foreground/background pixels), and in each of K rounds corrects the `--region` square of it that holds the most
wrong pixels (what the eye goes to first) and presses Retrain (`segment.retrain.retrain` with the widget's
defaults, learning from the regions corrected so far). That frame then leaves the test set: the other sparse
frames are scored before the first round and after each (`rounds` in the JSON; Otsu on the same frames).
`--replay R` retrains with windows of the labelled training image beside the corrections (R of its pixels per
corrected pixel, `RetrainConfig.replay`).
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
from machine import cpu_name

from napari_tower.config import FinetuneConfig, PredictConfig
from napari_tower.data import Normalisation, compute_normalisation, from_array
from napari_tower.segment import Predictor, finetune

SHARED = Path(os.environ.get("NAPARI_TOWER_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
SETS = ("dsb2018", "usiigaci_phase", "sbiad634_ganglioneuroblastoma")


def fg_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred > 0, truth > 0
    return float(2 * (p & t).sum() / max(1, p.sum() + t.sum()))


def otsu_dice(image: np.ndarray, truth: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    above = image > threshold_otsu(image)
    return max(fg_dice(above, truth), fg_dice(~above, truth))


def select(name: str, n_sparse: int) -> tuple[str, list[str]]:
    """(dense training image, sparse test images) of a set, as file stems."""
    root = SHARED / name
    with open(root / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if name == "dsb2018":
        cand = []
        for r in rows:
            if r["grayscale"] != "1" or int(r["n_nuclei"]) < 5:
                continue
            m = tifffile.imread(root / "masks" / f"{r['id']}.tif") > 0
            im = tifffile.imread(root / "images" / f"{r['id']}.tif")
            if im[m].mean() > im[~m].mean():  # fluorescence: bright nuclei on a dark background
                cand.append((float(m.mean()), r["id"]))
    else:
        cand = [(float(r["fg_frac"]), Path(r["file"]).stem) for r in rows if r.get("labelled", "1") == "1"]
    cand.sort()
    return cand[-1][1], [c[1] for c in cand[:n_sparse]]


def load(name: str, stem: str) -> tuple[np.ndarray, np.ndarray]:
    root = SHARED / name
    image = tifffile.imread(root / "images" / f"{stem}.tif")
    return image, tifffile.imread(root / "masks" / f"{stem}.tif").astype(np.int64)


def run_set(name: str, seed: int, args: argparse.Namespace) -> dict:
    dense, sparse = select(name, args.sparse)
    image, mask = load(name, dense)
    cfg = FinetuneConfig(seed=seed, device=args.device)
    if args.steps is not None:
        cfg.steps = args.steps
    if args.zoom is not None and hasattr(cfg, "zoom"):  # absent before the scaled copies of issue 21
        cfg.zoom = args.zoom
    if args.head is not None:
        cfg.instance_head = args.head
    if args.jitter is not None and hasattr(cfg, "intensity_jitter"):  # absent before issue 21's augmentation
        cfg.intensity_jitter = args.jitter
    cfg.mixed_precision = not args.fp32
    t0 = time.perf_counter()
    saved = Path(args.load_models or "-") / f"{name}-seed{seed}.pt"
    if args.load_models:  # the same fine-tuned models, predicted again (e.g. before/after a prediction change)
        ckpt = torch.load(saved, weights_only=False)
    else:
        ckpt = finetune([from_array(image, dense)], [mask[None]], cfg, init=args.init).checkpoint
    if args.save_models:
        Path(args.save_models).mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, Path(args.save_models) / f"{name}-seed{seed}.pt")
    train_s = time.perf_counter() - t0
    predictor = Predictor(ckpt, PredictConfig(device=args.device))
    rows = []
    for stem in [dense] + sparse:
        im, truth = load(name, stem)
        img = from_array(im, stem)
        pred = predictor.predict(img).labels[0]
        norm = compute_normalisation(img.data, stem)
        normed = norm.apply(np.asarray(img.data[0]))[0]
        used = predictor.normalisation_for(img)
        span = np.subtract(used.high, used.low)  # the same mapping, plus 0.05 before clipping
        up = Normalisation((used.low - 0.05 * span).tolist(), (used.high - 0.05 * span).tolist())
        # Foreground by the model's own rule (a distance head's third map is not a class).
        shifted = predictor.labels_from(predictor.probabilities(img.data[0], up)) > 0
        rows.append({
            "image": stem, "role": "train" if stem == dense else "test",
            "true_share": float((truth > 0).mean()), "pred_share": float((pred > 0).mean()),
            "dice": fg_dice(pred, truth), "wrong_share": float(((pred > 0) != (truth > 0)).mean()),
            "otsu_dice": otsu_dice(im, truth), "shift_share": float(shifted.mean()),
            # Normalised intensity of background and foreground pixels (per-image percentiles, as predicted).
            "bg_intensity": float(np.median(normed[truth == 0])), "fg_intensity": float(np.median(normed[truth > 0])),
        })
    corrections = None
    if args.correct:
        corrections = correct_rounds(ckpt, name, seed, rows, args, replay=[(from_array(image, dense), mask[None])])
    tests = [r for r in rows if r["role"] == "test"]
    return {
        "set": name, "seed": seed, "train_image": dense, "train_seconds": train_s, "images": rows,
        "corrections": corrections,
        "mean_dice": float(np.mean([r["dice"] for r in tests])),
        "mean_otsu_dice": float(np.mean([r["otsu_dice"] for r in tests])),
        "mean_share_ratio": float(np.mean([r["pred_share"] / r["true_share"] for r in tests])),
        "worst_shift_ratio": float(max(r["shift_share"] / r["true_share"] for r in tests)),
        "worst_share_ratio": float(max(max(r["pred_share"] / r["true_share"],
                                           r["true_share"] / max(r["pred_share"], 1e-9)) for r in tests)),
    }


def correct_rounds(ckpt, name: str, seed: int, rows: list[dict], args: argparse.Namespace, replay: list) -> dict:
    """The loop on the sparse frame the model gets most wrong; the other sparse frames scored after each round.

    Marks that frame's row role "corrected", so the set's summary scores the remaining frames only.
    """
    from bench_loop import fg_aligned_previous

    from napari_tower.config import RetrainConfig
    from napari_tower.segment.retrain import retrain
    from napari_tower.segment.uncertainty import suggest_region

    pcfg = PredictConfig(device=args.device)
    tests = [r for r in rows if r["role"] == "test"]
    worst = max(tests, key=lambda r: r["wrong_share"])
    worst["role"] = "corrected"
    scored = [r["image"] for r in rows if r["role"] == "test"]
    im, truth = load(name, worst["image"])
    frame = from_array(im, worst["image"])

    frames = {stem: load(name, stem) for stem in scored}

    def score(model) -> dict:
        predictor = Predictor(model, pcfg)
        out = {"dice": [], "share_ratio": []}
        for stem, (test_im, test_truth) in frames.items():
            pred = predictor.predict(from_array(test_im, stem)).labels[0]
            out["dice"].append(fg_dice(pred, test_truth))
            out["share_ratio"].append(float((pred > 0).mean() / (test_truth > 0).mean()))
        return out

    rounds = [{"round": 0, "seconds": 0.0, **score(ckpt)}]
    reviewed = np.zeros(truth.shape, np.uint8)
    corrected, model = [], ckpt
    for rnd in range(1, args.correct + 1):
        t0 = time.perf_counter()
        predicted = Predictor(model, pcfg).predict(frame).labels[0]
        wrong = ((predicted > 0) != (truth > 0)).astype(np.float32)
        region = suggest_region([wrong], args.region, corrected)
        if region is None:
            break
        corrected.append(region)
        reviewed[region.slices()] = 1
        previous = fg_aligned_previous(predicted, truth.astype(np.int32))
        fixed = np.where(reviewed > 0, truth, previous).astype(np.int32)
        result = retrain(model, frame, previous[None], fixed[None],
                         RetrainConfig(seed=seed * 1000 + rnd, device=args.device, replay=args.replay),
                         predict_cfg=pcfg, reviewed=reviewed[None], replay=replay)
        model = result.model
        rounds.append({"round": rnd, "seconds": time.perf_counter() - t0, "region": [region.y, region.x, region.size],
                       "wrong_in_region": int(wrong[region.slices()].sum()), "edited": int(result.edited),
                       **score(model)})
        print(f"  round {rnd}: Dice {np.mean(rounds[-1]['dice']):.3f}, worst share "
              f"{max(rounds[-1]['share_ratio']):.2f}x ({rounds[-1]['seconds']:.0f} s)", flush=True)
    return {"frame": worst["image"], "scored": scored, "region": args.region, "rounds": rounds,
            "otsu_dice": [r["otsu_dice"] for r in rows if r["role"] == "test"]}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["set"] for r in runs):
        per_seed = [r for r in runs if r["set"] == name]
        s = {}
        for key in ("mean_dice", "mean_otsu_dice", "mean_share_ratio", "worst_share_ratio", "worst_shift_ratio"):
            v = np.array([r[key] for r in per_seed])
            s[key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                      "per_seed": v.round(4).tolist()}
        out[name] = s
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help=f"fine-tuning steps (default {FinetuneConfig.steps})")
    ap.add_argument("--sparse", type=int, default=4, help="sparsest images predicted per set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", default=None, help="pretraining checkpoint (default: random init)")
    ap.add_argument("--save-models", default=None, help="folder to keep each fine-tuned checkpoint in")
    ap.add_argument("--load-models", default=None, help="folder of checkpoints saved by --save-models: predict only")
    ap.add_argument("--jitter", type=float, default=None, help="FinetuneConfig.intensity_jitter (default: its default)")
    ap.add_argument("--zoom", type=float, default=None, help="FinetuneConfig.zoom (default: its default; 1: off)")
    ap.add_argument("--head", default=None, help="FinetuneConfig.instance_head (default: its default)")
    ap.add_argument("--device", default="cpu", help="device for fine-tuning and prediction (cpu, cuda, auto)")
    ap.add_argument("--fp32", action="store_true", help="train in float32 on CUDA too (CPU always does)")
    ap.add_argument("--correct", type=int, default=0,
                    help="rounds of the correct-and-retrain loop on the sparse frame the model gets most wrong")
    ap.add_argument("--replay", type=float, default=0.0,
                    help="RetrainConfig.replay: the labelled training image's pixels replayed per corrected pixel")
    ap.add_argument("--region", type=int, default=256, help="side of the square corrected each round")
    ap.add_argument("--out", default=None, help="JSON file for the raw results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = []
    for name in args.sets:
        for seed in args.seeds:
            r = run_set(name, seed, args)
            runs.append(r)
            print(f"{name} seed {seed} ({r['train_seconds']:.0f} s): Dice {r['mean_dice']:.3f} vs Otsu "
                  f"{r['mean_otsu_dice']:.3f}; predicted/true share " +
                  ", ".join(f"{x['pred_share']:.3f}/{x['true_share']:.3f}" for x in r["images"]), flush=True)
            if args.out:  # partial results survive an interrupted run
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps({"runs": runs}, indent=1))
    result = {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__, "args": vars(args),
              "summary": summarise(runs), "runs": runs}
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
