"""Label-free start on DSB2018 nuclei: prototypes named from ONE labelled image -> pseudo-labels -> segmenter.

    python benchmarks/bench_prototypes.py [--data ../shared/data/dsb2018] [--checkpoint tower.pt]
        [--pretrain-steps 400] [--k 16] [--levels 0,1,2,3] [--ignore 0.2] [--finetune-steps 400]
        [--label-seed 0] [--out DIR]

Grayscale images only, split 80/20 with the seed `napari-tower bench` uses. Phases, each timed:
1. pretrain TOWER on the training images (unlabelled), unless --checkpoint is given;
2. find K prototypes on the training images;
3. name every prototype by the majority class of its pixels on ONE training image, the only labels used
   anywhere: by default the image whose prototype mix is closest to the average (chosen without labels,
   `most_typical_image`); with --label-image random, one drawn with --label-seed. Either way the
   pseudo-label Dice of 20 randomly drawn labelled images is reported too, to show the spread;
4. pseudo-labels for the other training images, scored against their true masks: foreground Dice with every
   pixel labelled (ignore 0) and, with the ignore band, Dice over the annotated pixels and their share;
5. fine-tune a segmenter on the pseudo-labels (sparse target) and score it on the held-out 20%.
Prints a JSON object (also written to --out/results.json). Otsu thresholding per image is scored on the same
held-out images as a reference a user could get without any model.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_tower.bench import load_dataset
from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig, PretrainConfig, PrototypeConfig
from napari_tower.model_bundle import ModelBundle
from napari_tower.prototypes import find_prototypes, majority_mapping, most_typical_image, pseudo_labels
from napari_tower.segment import Predictor, evaluate, finetune
from napari_tower.segment.metrics import dice
from napari_tower.train import pretrain


def _otsu_dice(images, truths) -> float:
    from skimage.filters import threshold_otsu

    scores = []
    for im, t in zip(images, truths):
        plane = np.asarray(im.data[0]).mean(0)
        scores.append(dice(plane > threshold_otsu(plane), t > 0))
    return float(np.mean(scores))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"))
    ap.add_argument("--checkpoint", help="pretrained checkpoint to use instead of pretraining")
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--k", type=int, default=PrototypeConfig.k)
    ap.add_argument("--levels", default="", help="encoder levels, e.g. 0,1,2 (default: the finest four)")
    ap.add_argument("--intensity-weight", type=float, default=PrototypeConfig.intensity_weight)
    ap.add_argument("--samples", type=int, default=PrototypeConfig.samples)
    ap.add_argument("--ignore", type=float, default=PrototypeConfig.ignore)
    ap.add_argument("--label-image", choices=["typical", "random"], default="typical",
                    help="the labelled image: the most typical one (chosen without labels) or a seeded draw")
    ap.add_argument("--label-seed", type=int, default=0, help="seed of the draw with --label-image random")
    ap.add_argument("--finetune-steps", type=int, default=400)
    ap.add_argument("--finetune-batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="bench_prototypes_out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    data = Path(args.data)
    ds = load_dataset([str(data / "images")], [str(data / "masks")], grayscale_only=True)
    times["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if args.checkpoint:
        ckpt = ModelBundle.load(args.checkpoint)
    else:
        pcfg = PretrainConfig(steps=args.pretrain_steps, batch=args.batch, seed=args.seed, device=args.device,
                              val_every=0, checkpoint_every=0, data=DataConfig(patch=args.patch),
                              model=ModelConfig(base=args.base, depth=args.depth))
        ckpt = pretrain(ds.train_images, pcfg, out / "tower.pt").checkpoint
    times["pretrain_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cfg = PrototypeConfig(k=args.k, seed=args.seed, device=args.device, samples=args.samples, ignore=args.ignore,
                          intensity_weight=args.intensity_weight,
                          levels=tuple(int(v) for v in args.levels.split(",") if v.strip()))
    result = find_prototypes(ds.train_images, ckpt, cfg)
    times["prototypes_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    def draw(seed: int) -> int:
        return int(np.random.default_rng(seed).integers(len(ds.train_images)))

    def naming(i: int) -> dict[int, int]:
        return majority_mapping(result.assignments[i].prototype_map()[0], ds.train_labels[i][0] > 0)

    labelled = most_typical_image(result.assignments) if args.label_image == "typical" else draw(args.label_seed)
    mapping = naming(labelled)
    others = [i for i in range(len(ds.train_images)) if i != labelled]
    dense, annotated, coverage, with_band = [], [], [], []
    train_images, train_labels = [], []
    for i in others:
        truth = ds.train_labels[i][0] > 0
        full = pseudo_labels(result.assignments[i], mapping, 0.0)[0]
        dense.append(dice(full >= 2, truth))
        banded = pseudo_labels(result.assignments[i], mapping, cfg.ignore)
        known = banded[0] > 0
        annotated.append(dice((banded[0] >= 2)[known], truth[known]))
        coverage.append(float(known.mean()))
        with_band.append(dice(banded[0] >= 2, truth))
        if known.any():  # an image whose pixels all fell to unnamed prototypes teaches nothing
            train_images.append(ds.train_images[i])
            train_labels.append(banded.astype(np.int64))
    times["pseudo_labels_s"] = time.perf_counter() - t0

    spread = []  # dense pseudo-label Dice when the labelled image is drawn at random instead
    for seed in range(20):
        i = draw(seed)
        m = naming(i)
        spread.append(float(np.mean([dice(pseudo_labels(result.assignments[j], m, 0.0)[0] >= 2,
                                          ds.train_labels[j][0] > 0)
                                     for j in range(len(ds.train_images)) if j != i])))

    t0 = time.perf_counter()
    fcfg = FinetuneConfig(steps=args.finetune_steps, batch=args.finetune_batch, seed=args.seed, device=args.device,
                          target="sparse", val_every=max(1, args.finetune_steps // 5), checkpoint_every=0,
                          data=DataConfig(patch=args.patch), model=ModelConfig(base=args.base, depth=args.depth))
    seg = finetune(train_images, train_labels, fcfg, init=ckpt).checkpoint
    times["finetune_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    predictor = Predictor(seg, PredictConfig(device=args.device))
    preds = [predictor.predict(im).labels[0] for im in ds.test_images]
    truths = [lab[0] for lab in ds.test_labels]
    scores = evaluate([(p > 0).astype(np.uint8) for p in preds], [(t > 0).astype(np.uint8) for t in truths],
                      instances=False)
    times["predict_s"] = time.perf_counter() - t0
    seg.save(out / "segmenter.pt")
    rows = sorted(zip(scores["images"], ds.test_images, preds), key=lambda r: r[0]["dice"])
    worst = [{"image": im.source, "shape": list(pr.shape), "dice": round(row["dice"], 4),
              "predicted_share": round(float((pr > 0).mean()), 4)} for row, im, pr in rows[:5]]
    times["total_s"] = time.perf_counter() - t_all

    report = {
        "split": ds.description,
        "labelled_image": ds.train_images[labelled].source,
        "mapping": {str(k): v for k, v in sorted(mapping.items())},
        "prototype_shares": [round(float(s), 4) for s in result.prototypes.shares],
        "pseudo_labels": {
            "images": len(others),
            "dice_every_pixel_labelled": round(float(np.mean(dense)), 4),
            "dice_on_annotated_pixels": round(float(np.mean(annotated)), 4),
            "annotated_share": round(float(np.mean(coverage)), 4),
            "dice_unannotated_as_background": round(float(np.mean(with_band)), 4),
            "dice_every_pixel_labelled_20_random_labelled_images": {
                "mean": round(float(np.mean(spread)), 4), "min": round(float(np.min(spread)), 4),
                "median": round(float(np.median(spread)), 4), "max": round(float(np.max(spread)), 4)},
        },
        "segmenter": {"test_images": len(ds.test_images), "dice_mean": round(scores["mean"]["dice"], 4),
                      "dice_pooled": round(scores["pooled"]["dice"], 4),
                      "best_pseudo_val_dice": seg.get("best_val_dice"), "trained_on_images": len(train_images),
                      "worst_test_images": worst},
        "otsu_reference_test_dice": round(_otsu_dice(ds.test_images, truths), 4),
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "settings": {k: v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    text = json.dumps(report, indent=2)
    (out / "results.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
