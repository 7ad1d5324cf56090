"""3D pretraining speed on a CPU (issue 17): patches/s and peak RSS of the real `pretrain()` loop on a volume.

    nice -n 5 python benchmarks/bench_3d_speed.py [--data ../shared/data/isbi2012_em/train-volume.tif
        --method tower --base 16 --depth 4 --patch 64 --patch-z 16 --batch 4 --steps 12 --threads 1 --dims 3d]

Runs `pretrain()` (sampler with the structure prior, corruption, forward, backward, Adam) for
--steps steps and times each step from the progress callback. Prints a JSON object with the
median and mean seconds per step after the first two (warm-up), patches/s and voxels/s from the
median, the peak resident set size of this process (resource.getrusage, MB), torch threads, and
the load average before and after (the machine may be shared: say so when quoting seconds).
Without the volume (no ../shared; NAPARI_TOWER_SHARED points elsewhere) a synthetic 30 x 512 x 512
stack of nuclei is used.
`--dims 2d` runs the same model per plane (patch x patch, no patch_z) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("NAPARI_TOWER_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
DEFAULT_DATA = SHARED / "isbi2012_em" / "train-volume.tif"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--method", default="tower")
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--patch-z", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dims", choices=("2d", "3d"), default="3d")
    ap.add_argument("--voxel-size", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("Z", "Y", "X"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from napari_tower.config import DataConfig, ModelConfig, PretrainConfig
    from napari_tower.data import from_array, read_image
    from napari_tower.train import pretrain

    if args.data.exists():
        image, source = read_image(args.data), str(args.data)
    else:
        from napari_tower.samples import synthetic_nuclei

        stack = np.stack([synthetic_nuclei((512, 512), 60, seed=0)[0] for _ in range(30)])
        image, source = from_array(stack, "synthetic", axes="ZYX"), "synthetic 30 x 512 x 512 nuclei"
    cfg = PretrainConfig(method=args.method, steps=args.steps, batch=args.batch, seed=0, device="cpu",
                         val_every=0, checkpoint_every=0, mixed_precision=False,
                         data=DataConfig(patch=args.patch, patch_z=args.patch_z),
                         model=ModelConfig(base=args.base, depth=args.depth, dims=args.dims,
                                           voxel_size=tuple(args.voxel_size)))
    stamps: list[float] = []
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    pretrain([image], cfg, callback=lambda p: stamps.append(time.perf_counter()) if not p.done else None)
    total = time.perf_counter() - t0
    load_after = os.getloadavg()
    steps = np.diff(np.asarray(stamps))[1:]  # from the second step's end: steps 3.. are warm
    median, mean = float(np.median(steps)), float(np.mean(steps))
    voxels = args.patch * args.patch * (args.patch_z if args.dims == "3d" else 1)
    print(json.dumps({
        "data": source, "shape": list(image.shape), "method": args.method, "dims": args.dims,
        "base": args.base, "depth": args.depth, "patch": args.patch,
        "patch_z": args.patch_z if args.dims == "3d" else None, "batch": args.batch, "steps": args.steps,
        "threads": args.threads, "cpu": _cpu_name(),
        "s_per_step_median": round(median, 3), "s_per_step_mean": round(mean, 3),
        "patches_per_s": round(args.batch / median, 2),
        "mvoxels_per_s": round(args.batch * voxels / median / 1e6, 3),
        "total_s": round(total, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
    }, indent=1))


if __name__ == "__main__":
    main()
