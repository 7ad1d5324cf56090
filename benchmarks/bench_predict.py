"""Prediction throughput and seams.

    python benchmarks/bench_predict.py [--size 4096 --base 16 --tile 1024 --overlap 64 --threads 2 --precision auto]

Prints a JSON object: MPix/s of `Predictor.predict` (normalisation, tiling, blending, labels) on a
size x size uint16 image with an untrained base-16 segmenter (speed does not depend on the weights),
and the Dice between a tiled and an untiled prediction of a 1024 x 1024 image by a briefly trained model
(goal: >= 0.99, i.e. no seams), and between the default precision and float32.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig
from napari_tower.data import from_array
from napari_tower.samples import synthetic_nuclei
from napari_tower.segment import Predictor, finetune
from napari_tower.segment.metrics import dice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--tile", type=int, default=PredictConfig.tile)
    ap.add_argument("--overlap", type=int, default=PredictConfig.overlap)
    ap.add_argument("--batch", type=int, default=PredictConfig.batch)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default=PredictConfig.precision, help="auto, float32 or bfloat16")
    ap.add_argument("--train-steps", type=int, default=150)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    pairs = [synthetic_nuclei((256, 256), 40, seed=s) for s in range(3)]
    cfg = FinetuneConfig(steps=args.train_steps, batch=8, val_every=0, checkpoint_every=0,
                         data=DataConfig(patch=128), model=ModelConfig(base=args.base))
    ckpt = finetune([from_array(im) for im, _ in pairs], [lab[None] for _, lab in pairs], cfg).checkpoint

    rng = np.random.default_rng(0)
    big = from_array((rng.random((args.size, args.size)) * 4000).astype(np.uint16), "big")
    predictor = Predictor(ckpt, PredictConfig(tile=args.tile, overlap=args.overlap, batch=args.batch,
                                              precision=args.precision))
    predictor.predict(from_array(np.asarray(big.data[0, 0, :512, :512]), "warm-up"))  # oneDNN picks kernels once
    t0 = time.perf_counter()
    predictor.predict(big)
    seconds = time.perf_counter() - t0

    image, _ = synthetic_nuclei((1024, 1024), 600, seed=7)
    im = from_array(image, "seams")
    tiled = Predictor(ckpt, PredictConfig(tile=256, overlap=64)).predict(im).labels[0]
    whole = Predictor(ckpt, PredictConfig(tile=1024, overlap=0)).predict(im).labels[0]
    # Reduced precision must not change the segmentation: compare with float32 on the same tiles.
    fp32 = Predictor(ckpt, PredictConfig(tile=1024, overlap=0, precision="float32")).predict(im).labels[0]
    print(json.dumps({
        "size": args.size, "base": args.base, "tile": args.tile, "overlap": args.overlap, "threads": args.threads,
        "precision": str(predictor.dtype).replace("torch.", ""), "seconds": round(seconds, 2),
        "mpix_per_s": round(args.size**2 / seconds / 1e6, 3),
        "tiled_vs_untiled_dice": round(dice(tiled, whole), 5),
        "auto_vs_float32_dice": round(dice(whole, fp32), 5),
    }, indent=2))


if __name__ == "__main__":
    main()
