"""3D training speed on a CPU (issue 17): patches/s and peak RSS of the real `pretrain()` or `finetune()` loop.

    nice -n 5 python benchmarks/bench_3d_speed.py [--loop pretrain|finetune]
        [--data ../shared/data/isbi2012_em/train-volume.tif --method tower --base 16 --depth 4
        --patch P --patch-z Z --batch B --steps 12 --threads 1 --dims 3d --voxel-size 12.5 1 1]

`--loop pretrain` runs `pretrain()` (sampler with the structure prior, corruption, forward, backward, Adam);
`--loop finetune` runs `finetune()` as a user who painted two slices of the volume would (ISBI: the membrane
labels of slices 10 and 20 as sparse scribbles, 1 = cell, 2 = membrane, every other slice unannotated; no
validation). Patch, slices per patch and batch default to the 3D defaults a run gets from the CLI or the
widget (`napari_tower.volume_defaults`: pretraining 64 x 64 x 16, batch 4; fine-tuning 128 x 128 x 4, batch 2).
Each step is timed from the progress callback. Prints a JSON object with the median and mean seconds per step
after the first two (warm-up), patches/s and voxels/s from the median, the peak resident set size of this
process (resource.getrusage, MB), torch threads, and the load average before and after (the machine may be
shared: say so when quoting seconds).
Without the volume (no ../shared; NAPARI_TOWER_SHARED points elsewhere) a synthetic 30 x 512 x 512 stack of
nuclei is used (fine-tuning: their masks on two slices).
`--dims 2d` runs the same model per plane (patch x patch, no patch_z) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_name

SHARED = Path(os.environ.get("NAPARI_TOWER_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
DEFAULT_DATA = SHARED / "isbi2012_em" / "train-volume.tif"
PAINTED = (10, 20)  # the slices a user painted for --loop finetune


def _painted(truth: np.ndarray) -> np.ndarray:
    """Sparse scribbles on the PAINTED slices (1 = background, 2 = the class), 0 (unannotated) elsewhere."""
    labels = np.zeros(truth.shape, np.uint8)
    labels[list(PAINTED)] = truth[list(PAINTED)].astype(np.uint8) + 1
    return labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", choices=("pretrain", "finetune"), default="pretrain")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--labels", type=Path, default=None,
                    help="finetune: label volume (default: train-labels.tif beside --data; 0 = membrane)")
    ap.add_argument("--method", default="tower")
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--patch", type=int, default=None, help="default: the loop's 3D default")
    ap.add_argument("--patch-z", type=int, default=None, help="default: the loop's 3D default")
    ap.add_argument("--batch", type=int, default=None, help="default: the loop's 3D default")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dims", choices=("2d", "3d"), default="3d")
    ap.add_argument("--voxel-size", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("Z", "Y", "X"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PretrainConfig
    from napari_tower.data import from_array, read_image
    from napari_tower.segment import finetune
    from napari_tower.train import pretrain
    from napari_tower.volume_defaults import volume_defaults

    cls = PretrainConfig if args.loop == "pretrain" else FinetuneConfig
    chosen = volume_defaults(cls)
    args.patch = args.patch or chosen.patch
    args.patch_z = args.patch_z or chosen.patch_z
    args.batch = args.batch or chosen.batch
    labels = None
    if args.data.exists():
        image, source = read_image(args.data), str(args.data)
        if args.loop == "finetune":
            import tifffile

            truth = tifffile.imread(args.labels or args.data.with_name("train-labels.tif")) == 0  # membrane
            labels = _painted(truth)
    else:
        from napari_tower.samples import synthetic_nuclei

        pairs = [synthetic_nuclei((512, 512), 60, seed=0) for _ in range(30)]
        stack = np.stack([p[0] for p in pairs])
        image, source = from_array(stack, "synthetic", axes="ZYX"), "synthetic 30 x 512 x 512 nuclei"
        labels = _painted(np.stack([p[1] > 0 for p in pairs]))
    common = dict(steps=args.steps, batch=args.batch, seed=0, device="cpu", val_every=0, checkpoint_every=0,
                  mixed_precision=False, data=DataConfig(patch=args.patch, patch_z=args.patch_z),
                  model=ModelConfig(base=args.base, depth=args.depth, dims=args.dims,
                                    voxel_size=tuple(args.voxel_size)))
    if args.loop == "pretrain":
        cfg: Any = PretrainConfig(method=args.method, **common)
    else:
        cfg = FinetuneConfig(target="sparse", val_fraction=0.0, **common)
        if args.dims == "2d":  # 2D trains on the painted planes only, as the widget and bench_volumes do
            assert labels is not None
            image = from_array(np.asarray(image.data[list(PAINTED), 0]), "painted planes", axes="ZYX")
            labels = labels[list(PAINTED)]
    stamps: list[float] = []

    def stamp(p: Any) -> None:
        if not p.done:
            stamps.append(time.perf_counter())

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    if args.loop == "pretrain":
        pretrain([image], cfg, callback=stamp)
    else:
        finetune([image], [labels], cfg, callback=stamp)
    total = time.perf_counter() - t0
    load_after = os.getloadavg()
    steps = np.diff(np.asarray(stamps))[1:]  # from the second step's end: steps 3.. are warm
    median, mean = float(np.median(steps)), float(np.mean(steps))
    voxels = args.patch * args.patch * (cfg.data.patch_z if args.dims == "3d" else 1)
    print(json.dumps({
        "loop": args.loop, "data": source, "shape": list(image.shape),
        "method": args.method if args.loop == "pretrain" else None, "dims": args.dims,
        "voxel_size": list(args.voxel_size),
        "base": args.base, "depth": args.depth, "patch": args.patch,
        "patch_z": cfg.data.patch_z if args.dims == "3d" else None, "batch": args.batch, "steps": args.steps,
        "threads": args.threads, "cpu": cpu_name(),
        "s_per_step_median": round(median, 3), "s_per_step_mean": round(mean, 3),
        "patches_per_s": round(args.batch / median, 2),
        "mvoxels_per_s": round(args.batch * voxels / median / 1e6, 3),
        "total_s": round(total, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
    }, indent=1))


if __name__ == "__main__":
    main()
