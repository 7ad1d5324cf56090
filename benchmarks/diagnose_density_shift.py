"""Measures each suspect of issue 21 (dense-to-sparse flood) on one set and seed.

    python benchmarks/diagnose_density_shift.py --set usiigaci_phase --seed 0 [--steps 300] [--threads 1]
        [--out diag.json]

Fine-tunes on the set's densest labelled image exactly as `bench_density_shift.py` does (the user's defaults),
keeping a checkpoint every 50 steps, and reports for the sparse test images:

- sampler: the share of training patches that are background-rich (foreground < 10%) and the share of
  training background pixels that are open background (> 16 px from any object), with the fine-tuning sampler
  (uniform) and with the structure prior (pretraining's), against the same shares in the sparse images;
- normalisation: predicted share with the model's stored percentiles and with each image's own;
- foreground rule: predicted share with the argmax and with interior + boundary > 0.5;
- validation: predicted share at every 50th step (with one labelled image the last step is kept);
- intensity: predicted share when the normalised image is shifted (+-0.05) or scaled (x0.9, x1.1), i.e. how
  much the model keys on absolute intensity rather than shape and texture.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_density_shift import fg_dice, load, otsu_dice, select

from napari_tower.config import FinetuneConfig, PredictConfig
from napari_tower.data import Normalisation, PatchSampler, Source, compute_normalisation, from_array
from napari_tower.model_bundle import ModelBundle
from napari_tower.segment import Predictor, finetune
from napari_tower.segment.targets import encode_targets


def open_background(mask: np.ndarray, distance: int = 16) -> np.ndarray:
    """Background pixels farther than `distance` px from any object."""
    return ndimage.distance_transform_edt(mask == 0) > distance


def sampler_stats(image: np.ndarray, mask: np.ndarray, prior: bool, n: int = 4000) -> dict[str, float]:
    img = from_array(image)
    targets = encode_targets(mask[None], "instance")
    src = Source(img, compute_normalisation(img.data, "train"), targets)
    patch = min(128, min(image.shape) // 16 * 16)
    sampler = PatchSampler([src], patch, structure_prior=prior)
    batch = sampler.sample(n, np.random.default_rng(0))
    fg = (batch["labels"] > 1).mean(axis=(1, 2))
    # Open background seen: the sampler's patches drawn again as corners, counted on the full-image map.
    far = open_background(mask)
    rng = np.random.default_rng(0)
    seen_far, seen_bg = 0, 0
    for _ in range(n):
        _, _, y, x = sampler._pick_corner(rng)
        seen_far += int(far[y:y + patch, x:x + patch].sum())
        seen_bg += int((mask[y:y + patch, x:x + patch] == 0).sum())
    return {"patch": patch, "share_patches_fg_below_10pct": float((fg < 0.10).mean()),
            "share_patches_fg_below_2pct": float((fg < 0.02).mean()),
            "open_share_of_background_seen": seen_far / max(1, seen_bg)}


def shifted(norm: Normalisation, gain: float, offset: float) -> Normalisation:
    """The mapping x -> gain * norm(x) + offset (before clipping), as a Normalisation."""
    lo = np.asarray(norm.low)
    span = (np.asarray(norm.high) - lo) / gain
    low = lo - offset * span
    return Normalisation(low.tolist(), (low + span).tolist())


def shares(predictor: Predictor, images: list[tuple[np.ndarray, np.ndarray]], norm_of, rule: str = "argmax"):
    out = []
    for im, truth in images:
        img = from_array(im)
        probs = predictor.probabilities(img.data[0], norm_of(img))
        fg = probs.argmax(0) > 0 if rule == "argmax" else (1 - probs[0]) > 0.5
        out.append({"pred_share": float(fg.mean()), "dice": fg_dice(fg, truth)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="usiigaci_phase")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dense, sparse = select(args.set, 4)
    image, mask = load(args.set, dense)
    tests = [load(args.set, s) for s in sparse]
    report: dict = {"set": args.set, "seed": args.seed, "train_image": dense, "sparse": sparse,
                    "true_share": [float((t > 0).mean()) for _, t in tests],
                    "otsu_dice": [otsu_dice(im, t) for im, t in tests]}

    report["sampler"] = {"finetune_uniform": sampler_stats(image, mask, False),
                         "structure_prior": sampler_stats(image, mask, True),
                         "sparse_images_open_share_of_background": [
                             float(open_background(t).sum() / max(1, (t == 0).sum())) for _, t in tests],
                         "train_image_open_share_of_background": float(open_background(mask).sum()
                                                                       / max(1, (mask == 0).sum()))}
    print(json.dumps(report["sampler"], indent=1), flush=True)

    ckpt_file = Path(f"/tmp/diag-{args.set}-{args.seed}.pt")
    steps: dict[int, ModelBundle] = {}

    def keep(p) -> None:  # the loop saves before it reports, so the file holds this step's weights
        if p.step % 50 == 0 and p.step not in steps and ckpt_file.exists():
            steps[p.step] = ModelBundle.load(ckpt_file)

    cfg = FinetuneConfig(seed=args.seed, device="cpu", steps=args.steps, checkpoint_every=50)
    final = finetune([from_array(image, dense)], [mask[None]], cfg, out=ckpt_file, callback=keep).checkpoint
    steps[args.steps] = final
    pred = Predictor(final, PredictConfig(device="cpu"))
    own = lambda img: compute_normalisation(img.data, "x")
    report["normalisation"] = {"model": shares(pred, tests, pred.normalisation_for),
                               "own": shares(pred, tests, own)}
    report["foreground_rule"] = {"argmax": report["normalisation"]["model"],
                                 "one_minus_background": shares(pred, tests, pred.normalisation_for, "sum")}
    report["steps"] = {str(s): shares(Predictor(b, PredictConfig(device="cpu")), tests,
                                      pred.normalisation_for) for s, b in sorted(steps.items())}
    report["intensity"] = {f"gain{g}_offset{o}": shares(pred, tests, lambda img, g=g, o=o:
                                                        shifted(pred.normalisation_for(img), g, o))
                           for g, o in ((1.0, 0.0), (1.0, 0.05), (1.0, -0.05), (0.9, 0.0), (1.1, 0.0))}
    for key in ("normalisation", "foreground_rule", "steps", "intensity"):
        for k, v in report[key].items():
            print(key, k, "shares", [round(x["pred_share"], 3) for x in v], "dice",
                  [round(x["dice"], 3) for x in v], flush=True)
    print("true", [round(x, 3) for x in report["true_share"]], "otsu", [round(x, 3) for x in report["otsu_dice"]])
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
