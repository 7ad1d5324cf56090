"""Block-wise 3D prediction of a large uint16 zarr volume: peak memory (goal < 2 GB) and throughput (issue 17).

    python benchmarks/bench_blockwise3d.py [--shape 512 2048 2048 --chunks 32 256 256 --model tiny|default
                                            --block 32 384 384 --halo 16 32 32 --instances --threads 1
                                            --dir DIR --keep]

Writes a (Z, Y, X) uint16 zarr of synthetic bright balls on a noisy background, chunk by chunk (one
template chunk, flipped and shifted, so making 4 GiB takes about a minute, not an hour of random
numbers), and a 3D segmenter with random weights (speed and memory do not depend on the weights):
"tiny" is base 4, depth 2; "default" the 3D U-Net a 3D fine-tuning builds (base 16, depth 4). It then
runs `predict_blockwise` in its own process under `/usr/bin/time -v` and prints a JSON object with
the peak resident set size (MB), seconds and voxels per second. The volume is removed afterwards
unless --keep (or --dir) is given. Free disk is checked first: the raw volume's size plus 10% must fit.

To show memory does not grow with the volume, run two sizes with the same block, each large enough to
have a block with a full halo on every side (3 blocks along each axis), e.g. --shape 96 1152 1152 and
--shape 128 1536 1536.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _template(chunks: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """One chunk of balls (radius 3-8 voxels) on a noisy background."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: chunks[0], : chunks[1], : chunks[2]]
    fg = np.zeros(chunks, bool)
    n = max(4, int(np.prod(chunks) // 40_000))
    for _ in range(n):
        c = [rng.integers(0, s) for s in chunks]
        r = rng.integers(3, 9)
        fg |= (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
    image = 200 + 600 * fg + rng.normal(0, 40, chunks)
    return np.clip(image, 0, 65535).astype(np.uint16)


def _make_volume(path: Path, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> None:
    import zarr

    template = _template(chunks)
    z = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=np.uint16)
    for k, z0 in enumerate(range(0, shape[0], chunks[0])):
        for j, y0 in enumerate(range(0, shape[1], chunks[1])):
            for i, x0 in enumerate(range(0, shape[2], chunks[2])):
                part = np.roll(template[:, ::(-1) ** (i + j), ::(-1) ** (j + k)], (i * 7 + k * 3), axis=2)
                z[z0:z0 + chunks[0], y0:y0 + chunks[1], x0:x0 + chunks[2]] = \
                    part[: shape[0] - z0, : shape[1] - y0, : shape[2] - x0]


def _make_model(path: Path, model: str) -> None:
    import torch

    from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, to_dict
    from napari_tower.data import Normalisation
    from napari_tower.model_bundle import ModelBundle
    from napari_tower.segment.model import Segmenter

    base, depth = (4, 2) if model == "tiny" else (16, 4)
    cfg = FinetuneConfig(device="cpu", data=DataConfig(patch_z=16),
                         model=ModelConfig(base=base, depth=depth, dims="3d"))
    torch.manual_seed(0)
    net = Segmenter(1, 3, base=base, depth=depth, spatial_dims=3, pools=cfg.model.pools(cfg.data.patch_z)).eval()
    ModelBundle(kind="segmenter", target="instance", classes=3, config=to_dict(cfg), state=net.state_dict(),
                normalisation=Normalisation([200.0], [800.0]), init_method="scratch").save(path)


def _phase(args: argparse.Namespace) -> None:
    """The measured run (in its own process, so its peak RSS is its own)."""
    import resource

    import torch

    from napari_tower.config import PredictConfig
    from napari_tower.data import read_image
    from napari_tower.model_bundle import ModelBundle
    from napari_tower.segment import Predictor
    from napari_tower.segment.blockwise import predict_blockwise

    torch.set_num_threads(args.threads)
    work = Path(args.dir)
    predictor = Predictor(ModelBundle.load(work / "model.pt"), PredictConfig(device="cpu", instances=args.instances))
    image = read_image(work / "volume.zarr", axes="ZYX")
    t0 = time.perf_counter()
    result = predict_blockwise(predictor, image, work / "out.zarr", block=tuple(args.block), halo=tuple(args.halo),
                               chunk=args.chunk)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "blocks": result.blocks, "objects": result.objects,
                      "getrusage_peak_mb": peak_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 2048, 2048], metavar=("Z", "Y", "X"))
    ap.add_argument("--chunks", type=int, nargs=3, default=[32, 256, 256], help="input zarr chunks")
    ap.add_argument("--block", type=int, nargs=3, default=[32, 384, 384], help="block core (z, y, x)")
    ap.add_argument("--halo", type=int, nargs=3, default=[16, 32, 32])
    ap.add_argument("--chunk", type=int, default=128, help="output chunk side (y, x)")
    ap.add_argument("--model", choices=["tiny", "default"], default="tiny")
    ap.add_argument("--instances", action="store_true", help="3D instances (watershed + seam relabelling)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dir", help="working folder (default: a temporary one under /tmp, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the volume and the output")
    ap.add_argument("--phase", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        _phase(args)
        return
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench3d-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    raw = int(np.prod(args.shape)) * 2
    free = shutil.disk_usage(work).free
    if not (work / "volume.zarr").exists() and free < 1.1 * raw:
        raise SystemExit(f"error: {work} has {free / 2**30:.1f} GiB free, the volume needs {raw / 2**30:.1f} GiB: "
                         "use --dir on a larger disk or a smaller --shape")
    try:
        t0 = time.perf_counter()
        if not (work / "volume.zarr").exists():
            _make_volume(work / "volume.zarr", tuple(args.shape), tuple(args.chunks))
        _make_model(work / "model.pt", args.model)
        setup = time.perf_counter() - t0
        cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--phase", "--dir", str(work),
               "--block", *map(str, args.block), "--halo", *map(str, args.halo), "--chunk", str(args.chunk),
               "--threads", str(args.threads)] + (["--instances"] if args.instances else [])
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"block-wise run failed:\n{run.stderr[-3000:]}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
        voxels = int(np.prod(args.shape))
        print(json.dumps({
            "shape": args.shape, "chunks": args.chunks, "block": args.block, "halo": args.halo, "model": args.model,
            "instances": args.instances, "threads": args.threads, "cpu_count": os.cpu_count(),
            "raw_gib": round(raw / 2**30, 2), "setup_s": round(setup, 1), "blocks": result["blocks"],
            "seconds": round(result["seconds"], 1), "mvox_per_s": round(voxels / result["seconds"] / 1e6, 3),
            "peak_rss_mb": round(rss_kb / 1024, 1), "getrusage_peak_mb": round(result["getrusage_peak_mb"], 1),
            "under_2gb": rss_kb / 1024 < 2048,
        }, indent=2))
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
