"""Pretraining cost: TOWER's step against one plain U-Net forward+backward, and end-to-end throughput.

    python benchmarks/bench_pretrain.py [--base 16 --patch 128 --batch 16 --repeats 10 --threads 2]

Prints a JSON object:
- plain_ms: U-Net forward + L1 restoration loss + backward + Adam step on one batch;
- tower_ms: TOWER's full step (corruption, corrupted view through the U-Net, clean view through the
  encoder, both losses, backward, Adam step) on the same batch; ratio = tower_ms / plain_ms (goal <= 1.6);
- pipeline: patches/s of the real `pretrain()` loop (sampling with the structure prior included) and
  the share of its wall time spent outside the model's forward/backward.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from napari_tower.config import DataConfig, ModelConfig, PretrainConfig
from napari_tower.data import from_array
from napari_tower.methods import build_method
from napari_tower.samples import synthetic_nuclei
from napari_tower.train import pretrain


def _time(fn, repeats: int) -> float:
    """Median milliseconds per call after warm-up (the VM shows occasional multi-second stalls)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="steps of the end-to-end pretrain() run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the training engine does

    cfg = PretrainConfig(batch=args.batch, data=DataConfig(patch=args.patch), model=ModelConfig(base=args.base))
    method = build_method(cfg)
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    x = torch.rand(args.batch, 1, args.patch, args.patch)
    gen = torch.Generator().manual_seed(0)

    def plain() -> None:
        features, _ = method.unet(x)
        loss = F.l1_loss(method.restore(features), x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def tower() -> None:
        loss = method.step(x, gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    plain_ms = _time(plain, args.repeats)
    tower_ms = _time(tower, args.repeats)

    stack = np.stack([synthetic_nuclei((512, 512), 150, seed=s)[0] for s in range(4)])
    images = [from_array(stack, "bench", axes="ZYX")]
    run_cfg = PretrainConfig(steps=args.steps, batch=args.batch, val_every=0, checkpoint_every=0,
                             data=DataConfig(patch=args.patch), model=ModelConfig(base=args.base))
    t0 = time.perf_counter()
    pretrain(images, run_cfg)
    wall = time.perf_counter() - t0
    model_time = args.steps * tower_ms / 1000
    result = {
        "threads": args.threads, "base": args.base, "patch": args.patch, "batch": args.batch,
        "plain_ms": round(plain_ms, 1), "tower_ms": round(tower_ms, 1), "ratio": round(tower_ms / plain_ms, 3),
        "pipeline_patches_per_s": round(args.steps * args.batch / wall, 1),
        "pipeline_share_outside_model_step": round(max(0.0, 1 - model_time / wall), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
