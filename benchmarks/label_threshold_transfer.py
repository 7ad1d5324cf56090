"""How far does one labelled image's boundary convention carry? (issue 21, no training involved)

    NAPARI_TOWER_SHARED=/work/shared python benchmarks/label_threshold_transfer.py [--sets dsb2018 ...] [--out F]

For each set, the dense labelled image and the sparse images of `bench_density_shift.py`. Every image is scaled
the way the fine-tuned model scales it (the labelled image's 1st/99.8th percentiles, `PredictConfig.normalise`
"model"). Then, per image:

- `label_fit_dice`: Dice of the one global threshold (and polarity) that best fits the *labelled* image's masks,
  applied to this image: the best any intensity rule learnt from that one image can do if it keys on intensity;
- `otsu_dice`: Otsu's threshold of this image (best polarity), the issue's bar;
- `oracle_dice`, `oracle_level`: the best threshold for this image's own masks, and where it sits between the
  image's background and object medians (0 = background level, 1 = object level): the boundary convention;
- `median_area`: median object area in pixels.

A model fine-tuned on the labelled image learns its boundary convention; where the sparse images' masks follow
another (a higher `oracle_level`, smaller objects), its Dice is capped near `label_fit_dice`, while Otsu adapts
its threshold to each image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_density_shift import fg_dice, load, otsu_dice, select

from napari_tower.data import compute_normalisation, from_array

LEVELS = np.linspace(0.005, 0.995, 199)


def best_threshold(image: np.ndarray, mask: np.ndarray) -> tuple[float, int, float]:
    """(threshold, polarity +1 above / -1 below, Dice) that best fit `mask` on `image` (values in [0, 1])."""
    best = (0.5, 1, -1.0)
    for polarity in (1, -1):
        for t in LEVELS:
            d = fg_dice(image > t if polarity > 0 else image < t, mask)
            if d > best[2]:
                best = (float(t), polarity, d)
    return best


def oracle_level(raw: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(Dice, level between background and object medians) of this image's own best threshold."""
    bg, fg = float(np.median(raw[~mask])), float(np.median(raw[mask]))
    rel = np.linspace(0.02, 0.98, 97)
    dices = [fg_dice(raw > bg + r * (fg - bg), mask) if fg > bg else fg_dice(raw < bg + r * (fg - bg), mask)
             for r in rel]
    k = int(np.argmax(dices))
    return float(dices[k]), float(rel[k])


def run_set(name: str) -> dict:
    from skimage.measure import regionprops

    train, sparse = select(name, 4)
    raw_train, lab_train = load(name, train)
    norm = compute_normalisation(from_array(raw_train[None].astype(np.float32), train, axes="ZYX").data, train)

    def scaled(raw: np.ndarray) -> np.ndarray:
        return np.clip(norm.apply(raw[None, None].astype(np.float32))[0, 0], 0, 1)

    t, polarity, fit = best_threshold(scaled(raw_train), lab_train > 0)
    rows = []
    for role, stem in [("train", train)] + [("sparse", s) for s in sparse]:
        raw, lab = load(name, stem)
        mask = lab > 0
        x = scaled(raw)
        pred = x > t if polarity > 0 else x < t
        odice, level = oracle_level(raw.astype(np.float32), mask)
        rows.append({"image": stem, "role": role, "true_share": float(mask.mean()),
                     "label_fit_dice": fg_dice(pred, mask), "label_fit_share": float(pred.mean()),
                     "otsu_dice": otsu_dice(raw, lab), "oracle_dice": odice, "oracle_level": level,
                     "median_area": float(np.median([r.area for r in regionprops(lab)]))})
    tests = [r for r in rows if r["role"] == "sparse"]
    return {"set": name, "train": train, "threshold": t, "polarity": polarity, "train_fit_dice": fit, "images": rows,
            "mean_label_fit_dice": float(np.mean([r["label_fit_dice"] for r in tests])),
            "mean_otsu_dice": float(np.mean([r["otsu_dice"] for r in tests]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["dsb2018", "sbiad634_ganglioneuroblastoma", "usiigaci_phase"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    results = [run_set(name) for name in args.sets]
    for r in results:
        print(f"{r['set']}: threshold fitted on {r['train'][:12]} (Dice {r['train_fit_dice']:.3f} there): sparse "
              f"mean {r['mean_label_fit_dice']:.3f} vs Otsu {r['mean_otsu_dice']:.3f}")
        for i in r["images"]:
            print(f"  {i['role']:<6} {i['image'][:14]:<14} area {i['median_area']:6.0f}  fit {i['label_fit_dice']:.3f} "
                  f"(share {i['label_fit_share']:.4f} / {i['true_share']:.4f})  Otsu {i['otsu_dice']:.3f}  own best "
                  f"{i['oracle_dice']:.3f} at level {i['oracle_level']:.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
