"""Out-of-core prediction: peak memory and throughput of block-wise zarr -> zarr against the in-memory path.

    python benchmarks/bench_zarr_predict.py [--size 16384 --ref-size 4096 --chunk 1024 --block 4096 --halo 64
                                             --workers 1 --threads 2 --base 16 --instances --dir DIR]

Writes a size x size uint16 zarr (chunk x chunk chunks, tiled synthetic nuclei with noise) and an
untrained segmenter (speed does not depend on the weights), then runs, each in its own process under
`/usr/bin/time -v`, back to back:
1. the in-memory path, `Predictor.predict` on a ref-size x ref-size image;
2. block-wise prediction of the zarr into a chunked zarr (`predict_blockwise`);
3. the in-memory path again (the machine may be shared: the two in-memory runs bracket the block-wise one).
Prints a JSON object with MPix/s and the maximum resident set size (MB) of each run, and
blockwise_vs_memory = block-wise MPix/s / mean in-memory MPix/s (goal >= 0.8) with peak RSS (goal < 2048 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _make_image(path: Path, size: int, chunk: int) -> None:
    import zarr

    from napari_tower.samples import synthetic_nuclei

    tile, _ = synthetic_nuclei((chunk, chunk), max(4, chunk * chunk // 3000), seed=0)
    rng = np.random.default_rng(0)
    z = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(chunk, chunk), dtype=np.uint16)
    for y in range(0, size, chunk):
        for x in range(0, size, chunk):
            view = np.rot90(tile, int(rng.integers(4)))
            z[y:y + chunk, x:x + chunk] = view[: min(chunk, size - y), : min(chunk, size - x)]


def _make_model(path: Path, base: int) -> None:
    from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig
    from napari_tower.data import from_array
    from napari_tower.samples import synthetic_nuclei
    from napari_tower.segment import finetune

    image, labels = synthetic_nuclei((128, 128), 14, seed=0)
    cfg = FinetuneConfig(steps=0, batch=2, val_every=0, checkpoint_every=0, device="cpu",
                         data=DataConfig(patch=64), model=ModelConfig(base=base))
    finetune([from_array(image)], [labels[None]], cfg).checkpoint.save(path)


def _phase(args: argparse.Namespace) -> None:
    """One measured run (in its own process, so its peak RSS is its own)."""
    import torch

    from napari_tower.config import PredictConfig
    from napari_tower.data import from_array, read_image
    from napari_tower.model_bundle import ModelBundle
    from napari_tower.segment import Predictor
    from napari_tower.segment.blockwise import predict_blockwise

    torch.set_num_threads(args.threads)
    work = Path(args.dir)
    cfg = PredictConfig(device="cpu", instances=args.instances, block=args.block, halo=args.halo)
    predictor = Predictor(ModelBundle.load(work / "model.pt"), cfg)
    if args.phase == "memory":
        image = read_image(work / "image.zarr")
        ref = from_array(np.asarray(image.data[0, 0, : args.ref_size, : args.ref_size]), "reference")
        t0 = time.perf_counter()
        predictor.predict(ref)
        seconds, pixels = time.perf_counter() - t0, args.ref_size**2
    else:
        image = read_image(work / "image.zarr")
        t0 = time.perf_counter()
        predict_blockwise(predictor, image, work / "out.zarr", chunk=args.chunk, workers=args.workers)
        seconds, pixels = time.perf_counter() - t0, args.size**2
    print(json.dumps({"seconds": seconds, "mpix_per_s": pixels / seconds / 1e6}))


def _measure(args: argparse.Namespace, phase: str) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--phase", phase, "--dir", args.dir,
           "--size", str(args.size), "--ref-size", str(args.ref_size), "--chunk", str(args.chunk),
           "--block", str(args.block), "--halo", str(args.halo), "--workers", str(args.workers),
           "--threads", str(args.threads), "--base", str(args.base)] + (["--instances"] if args.instances else [])
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{phase} run failed:\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    return {"seconds": round(result["seconds"], 2), "mpix_per_s": round(result["mpix_per_s"], 3),
            "max_rss_mb": round(rss_kb / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--ref-size", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--halo", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--instances", action="store_true", help="instance labels (watershed + seam relabelling)")
    ap.add_argument("--dir", help="working folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--phase", choices=["memory", "blockwise"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        _phase(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.dir = args.dir or tmp
        work = Path(args.dir)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if not (work / "image.zarr").exists():
            _make_image(work / "image.zarr", args.size, args.chunk)
        _make_model(work / "model.pt", args.base)
        setup = time.perf_counter() - t0
        first = _measure(args, "memory")
        blockwise = _measure(args, "blockwise")
        second = _measure(args, "memory")
        memory_rate = (first["mpix_per_s"] + second["mpix_per_s"]) / 2
        print(json.dumps({
            "size": args.size, "ref_size": args.ref_size, "chunk": args.chunk, "block": args.block, "halo": args.halo,
            "workers": args.workers, "threads": args.threads, "base": args.base, "instances": args.instances,
            "setup_s": round(setup, 1), "cpu_count": os.cpu_count(),
            "memory_before": first, "blockwise": blockwise, "memory_after": second,
            "blockwise_vs_memory": round(blockwise["mpix_per_s"] / memory_rate, 3),
            "blockwise_peak_rss_mb": blockwise["max_rss_mb"],
        }, indent=2))


if __name__ == "__main__":
    main()
