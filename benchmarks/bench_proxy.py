"""Benchmark: batched proxy-task corruptions vs a per-sample Python/numpy reference.

The reference follows Models Genesis's per-sample code (``generate_pair`` and its helpers in
MrGiovanni/ModelsGenesis, adapted to 2D patches with the spec's parameters): Python's ``random``
for the control flow and a Python loop over the ~1,250 shuffling windows. Block masking (TOWER)
is written the same way: a Python loop over the chosen cells. Both sides use 1,000 curve samples.

    python benchmarks/bench_proxy.py            # batch 16, 1 channel, 128 x 128, 2 threads
    python benchmarks/bench_proxy.py --batch 32 --size 256 --repeats 20
    python benchmarks/bench_proxy.py --cold     # skip the U-Net step that warms the allocator

Timing starts after one forward and backward pass of the default U-Net on the batch, the state the
pipeline runs in during training. In a fresh process glibc's malloc instead maps new pages for
every temporary over its 128 KiB threshold (and trims them again on free), so each call pays
about 1,500 page faults per 16 x 128^2 batch; the table reports faults per call either way.
"""

from __future__ import annotations

import argparse
import copy
import random
import resource
import sys
import time
from math import comb
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_tower.models import UNet  # noqa: E402
from napari_tower.proxy import GENESIS_TASKS, TOWER_TASKS, compose, structure_weights  # noqa: E402

# ----------------------------------------------------------------------------------------------
# per-sample reference (numpy), modelled on Models Genesis


def bernstein_poly(i: int, n: int, t: np.ndarray) -> np.ndarray:
    return comb(n, i) * (t ** (n - i)) * (1 - t) ** i


def bezier_curve(points, n_times: int = 1000):
    n_points = len(points)
    x_points = np.array([p[0] for p in points])
    y_points = np.array([p[1] for p in points])
    t = np.linspace(0.0, 1.0, n_times)
    polynomial_array = np.array([bernstein_poly(i, n_points - 1, t) for i in range(n_points)])
    return np.dot(x_points, polynomial_array), np.dot(y_points, polynomial_array)


CURVE_SAMPLES = 1000  # the batched version's default; Models Genesis's own code uses 100000


def ref_nonlinear(x: np.ndarray, rng: random.Random, prob: float = 0.9) -> np.ndarray:
    if rng.random() >= prob:
        return x
    points = [[0, 0], [rng.random(), rng.random()], [rng.random(), rng.random()], [1, 1]]
    xvals, yvals = bezier_curve(points, n_times=CURVE_SAMPLES)
    if rng.random() < 0.5:
        xvals = np.sort(xvals)  # inverted curve: only x sorted
    else:
        xvals, yvals = np.sort(xvals), np.sort(yvals)
    return np.interp(x, xvals, yvals)


def ref_local_shuffle(x: np.ndarray, rng: random.Random, nprng: np.random.Generator, prob: float = 0.5,
                      n_windows: int = 1250, max_side: int = 12) -> np.ndarray:
    if rng.random() >= prob:
        return x
    image_temp = copy.deepcopy(x)
    orig_image = copy.deepcopy(x)
    _, rows, cols = x.shape
    for _ in range(n_windows):
        bh, bw = rng.randint(1, max_side), rng.randint(1, max_side)
        ny, nx = rng.randint(0, rows - bh), rng.randint(0, cols - bw)
        window = orig_image[:, ny:ny + bh, nx:nx + bw].reshape(x.shape[0], -1)
        window = window[:, nprng.permutation(bh * bw)]  # np.random.shuffle of the flattened window
        image_temp[:, ny:ny + bh, nx:nx + bw] = window.reshape(x.shape[0], bh, bw)
    return image_temp


def ref_in_painting(x: np.ndarray, rng: random.Random, nprng: np.random.Generator) -> np.ndarray:
    _, rows, cols = x.shape
    cnt = 5
    while cnt > 0 and rng.random() < 0.95:
        bh, bw = rng.randint(rows // 6, rows // 3), rng.randint(cols // 6, cols // 3)
        ny, nx = rng.randint(3, rows - bh - 3), rng.randint(3, cols - bw - 3)
        x[:, ny:ny + bh, nx:nx + bw] = nprng.random((bh, bw))
        cnt -= 1
    return x


def ref_out_painting(x: np.ndarray, rng: random.Random, nprng: np.random.Generator) -> np.ndarray:
    _, rows, cols = x.shape
    image_temp = copy.deepcopy(x)
    x = nprng.random(x.shape)
    cnt = 5
    while cnt > 0 and (cnt == 5 or rng.random() < 0.95):
        bh = rows - rng.randint(3 * rows // 7, 4 * rows // 7)
        bw = cols - rng.randint(3 * cols // 7, 4 * cols // 7)
        ny, nx = rng.randint(3, rows - bh - 3), rng.randint(3, cols - bw - 3)
        x[:, ny:ny + bh, nx:nx + bw] = image_temp[:, ny:ny + bh, nx:nx + bw]
        cnt -= 1
    return x


def ref_block_mask(x: np.ndarray, rng: random.Random, weights: np.ndarray | None = None, cell: int = 8,
                   ratio: float = 0.25, floor: float = 0.25) -> np.ndarray:
    _, rows, cols = x.shape
    gh, gw = -(-rows // cell), -(-cols // cell)
    k = int(round(ratio * gh * gw))
    if weights is None:
        chosen = rng.sample(range(gh * gw), k)
    else:
        pad = np.zeros((gh * cell, gw * cell))
        pad[:rows, :cols] = weights
        w = pad.reshape(gh, cell, gw, cell).mean(axis=(1, 3)).ravel()
        share = w / w.sum() if w.sum() > 0 else np.full(gh * gw, 1.0 / (gh * gw))
        pi = floor / (gh * gw) + (1 - floor) * share
        chosen = np.random.default_rng(rng.getrandbits(32)).choice(gh * gw, size=k, replace=False, p=pi)
    out = x.copy()
    for c in chosen:
        cy, cx = divmod(int(c), gw)
        out[:, cy * cell:(cy + 1) * cell, cx * cell:(cx + 1) * cell] = 0.0
    return out


def ref_structure_weights(x: np.ndarray, cell: int = 8) -> np.ndarray:
    """Per-cell local variance, normalised to [0, 1] (numpy, vectorised within the sample)."""
    c, rows, cols = x.shape
    gh, gw = -(-rows // cell), -(-cols // cell)
    pad = np.zeros((c, gh * cell, gw * cell))
    pad[:, :rows, :cols] = x
    var = pad.reshape(c, gh, cell, gw, cell).var(axis=(2, 4)).mean(axis=0)
    var = var / var.max() if var.max() > 1e-10 else var * 0
    return np.kron(var, np.ones((cell, cell)))[:rows, :cols]


def ref_genesis(x: np.ndarray, rng: random.Random, nprng: np.random.Generator) -> np.ndarray:
    x = ref_nonlinear(x, rng, 0.9)
    x = ref_local_shuffle(x, rng, nprng, 0.5)
    if rng.random() < 0.9:
        x = ref_in_painting(x, rng, nprng) if rng.random() < 0.2 else ref_out_painting(x, rng, nprng)
    return np.clip(x, 0, 1)


def ref_tower(x: np.ndarray, rng: random.Random, nprng: np.random.Generator, prior: bool) -> np.ndarray:
    weights = ref_structure_weights(x) if prior else None
    x = ref_nonlinear(x, rng, 0.9)
    return np.clip(ref_block_mask(x, rng, weights), 0, 1)


# ----------------------------------------------------------------------------------------------


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_pair(ref_fn, fast_fn, repeats: int) -> tuple[float, float, float]:
    """Median seconds per call of each, measured alternately so both see the same machine load,
    and the batched path's minor page faults per call."""
    ref_fn(), fast_fn(), fast_fn()  # warm-up
    ref_times, fast_times, faults = [], [], 0
    for i in range(repeats):
        if i % 3 == 0 or i < 3:
            start = time.perf_counter()
            ref_fn()
            ref_times.append(time.perf_counter() - start)
        before = _faults()
        start = time.perf_counter()
        fast_fn()
        fast_times.append(time.perf_counter() - start)
        faults += _faults() - before
    return float(np.median(ref_times)), float(np.median(fast_times)), faults / repeats


def warm_allocator(x: torch.Tensor) -> None:
    """One forward and backward pass of the default U-Net, as in training before the corruptions run."""
    net = UNet(in_channels=x.shape[1]).to(x.device)
    net(x)[0].mean().backward()


def main(argv: list[str] | None = None) -> int:
    global CURVE_SAMPLES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30, help="batched calls per case (reference: a third)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cold", action="store_true", help="time in a fresh process's allocator state")
    parser.add_argument("--curve-samples", type=int, default=CURVE_SAMPLES,
                        help="Bezier samples in the reference (Models Genesis's code: 100000)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    CURVE_SAMPLES = args.curve_samples

    rng_np = np.random.default_rng(args.seed)
    batch = rng_np.random((args.batch, args.channels, args.size, args.size))
    x = torch.from_numpy(batch.astype(np.float32)).to(args.device)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    rng, nprng = random.Random(args.seed), np.random.default_rng(args.seed)

    if not args.cold:
        warm_allocator(x)

    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    cases = [
        ("genesis", lambda: [ref_genesis(s.copy(), rng, nprng) for s in batch],
         lambda: (compose(x, GENESIS_TASKS, gen), sync())),
        ("tower", lambda: [ref_tower(s.copy(), rng, nprng, False) for s in batch],
         lambda: (compose(x, TOWER_TASKS, gen), sync())),
        ("tower+prior", lambda: [ref_tower(s.copy(), rng, nprng, True) for s in batch],
         lambda: (compose(x, TOWER_TASKS, gen, weights=structure_weights(x, per_cell=True)), sync())),
    ]
    try:
        load = Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        load = "n/a"
    print(f"batch {args.batch} x {args.channels} x {args.size} x {args.size}, torch threads {args.threads}, "
          f"device {args.device}, reference curve samples {args.curve_samples}, load average {load}, "
          f"{'cold allocator' if args.cold else 'allocator warmed by one U-Net step'}")
    print(f"{'tasks':<13}{'reference patches/s':>22}{'batched patches/s':>20}{'speed-up':>10}{'faults/call':>13}")
    for name, ref_fn, fast_fn in cases:
        t_ref, t_fast, faults = timed_pair(ref_fn, fast_fn, args.repeats)
        print(f"{name:<13}{args.batch / t_ref:>22.0f}{args.batch / t_fast:>20.0f}{t_ref / t_fast:>9.1f}x{faults:>13.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
