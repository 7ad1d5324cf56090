"""Benchmark: batched proxy-task corruptions vs a per-sample Python/numpy reference.

The reference follows Models Genesis's per-sample code (``generate_pair`` and its helpers in
MrGiovanni/ModelsGenesis, adapted to 2D patches with the spec's parameters): Python's ``random``
for the control flow and a Python loop over the ~1,250 shuffling windows. Block masking (TOWER)
is written the same way: a Python loop over the chosen cells. Both sides use 1,000 curve samples.

    python benchmarks/bench_proxy.py            # batch 16, 1 channel, 128 x 128, 2 threads
    python benchmarks/bench_proxy.py --batch 32 --size 256 --repeats 20
    python benchmarks/bench_proxy.py --curve-samples 100000   # Models Genesis's own curve resolution
    python benchmarks/bench_proxy.py --compile  # also time TOWER's pixel pass compiled by torch.compile

Two timings per case, both medians:
- in training: every call of either path follows a forward and backward pass of the default U-Net
  on the batch, as the corruptions run in pretraining; both start with the caches the model step
  leaves, which costs a short batched call relatively more than a long per-sample one;
- back to back: each path called in a loop of its own (loops alternate, so both see the same load).
The batched path's minor page faults per call are reported too: in a process where no large
tensor has been freed yet, glibc's malloc maps fresh pages for every temporary over 128 KiB and
trims them again on free (about 1,500 faults per 16 x 128^2 batch); after the U-Net step it does not.
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

from napari_tower.models import UNet
from napari_tower.proxy import GENESIS_TASKS, TOWER_TASKS, compose, remap, structure_weights
from napari_tower.proxy import tasks as proxy_tasks

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
    k = round(ratio * gh * gw)
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


def _call(fn) -> tuple[float, int]:
    """Seconds and minor page faults of one call."""
    faults = _faults()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, _faults() - faults


def in_training(ref_fn, fast_fn, model_step, repeats: int) -> tuple[float, float, float]:
    """Median seconds per call of each path when every call follows a U-Net step, and the batched
    path's page faults per call."""
    ref_times, fast_times, faults = [], [], 0
    for _ in range(repeats):
        model_step()
        ref_times.append(_call(ref_fn)[0])
        model_step()
        seconds, fast_faults = _call(fast_fn)
        fast_times.append(seconds)
        faults += fast_faults
    return float(np.median(ref_times)), float(np.median(fast_times)), faults / repeats


def back_to_back(ref_fn, fast_fn, repeats: int, blocks: int = 3) -> tuple[float, float]:
    """Median seconds per call of each path called in loops of its own; the loops alternate.

    A batched loop makes `repeats` calls, so that (at ~1 ms a call against ~20 ms) it runs long
    enough to reach its steady state after the reference's loop.
    """
    ref_times, fast_times = [], []
    for _ in range(blocks):
        ref_fn()  # each loop's first call warms it up
        ref_times += [_call(ref_fn)[0] for _ in range(max(1, repeats // blocks))]
        fast_fn()
        fast_times += [_call(fast_fn)[0] for _ in range(repeats)]
    return float(np.median(ref_times)), float(np.median(fast_times))


def unet_step(x: torch.Tensor):
    """One forward and backward pass of the default U-Net on `x`, as in every pretraining step."""
    net = UNet(in_channels=x.shape[1]).to(x.device)
    side = 2 ** 4  # the default depth halves the patch four times
    x = torch.nn.functional.pad(x, (0, -x.shape[-1] % side, 0, -x.shape[-2] % side))

    def step() -> None:
        net.zero_grad(set_to_none=True)
        net(x)[0].mean().backward()
    return step


def remap_accuracy(curves: int = 200, pixels: int = 4096, seed: int = 1) -> np.ndarray:
    """Absolute error of the batched remap against Models Genesis's curve (100,000 samples, np.interp)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, 100_000)
    poly = np.array([bernstein_poly(i, 3, t) for i in range(4)])
    points = rng.random((curves, 4))
    invert = rng.random(curves) < 0.5
    x = rng.random((curves, pixels)).astype(np.float32)
    lut = remap._bezier_lut(torch.from_numpy(points).float(), torch.from_numpy(invert), 1000, 1025)
    ours = remap._lookup(torch.from_numpy(x).view(curves, 1, 1, pixels), lut).view(curves, pixels).numpy()
    errors = []
    for i in range(curves):
        xv = np.dot([0, points[i, 0], points[i, 2], 1], poly)
        yv = np.dot([0, points[i, 1], points[i, 3], 1], poly)
        xv, yv = (np.sort(xv), yv) if invert[i] else (np.sort(xv), np.sort(yv))
        errors.append(np.abs(ours[i] - np.interp(x[i].astype(np.float64), xv, yv)))
    return np.concatenate(errors)


def compiled_pixel_pass(x: torch.Tensor, gen: torch.Generator, model_step, repeats: int) -> None:
    """TOWER's pixel pass (curve tables and masked cells drawn once) eager and under torch.compile."""
    lut, shift = proxy_tasks._remap_and_mask_tables(x, gen, {"p": 1.0}, {}, None)
    start = time.perf_counter()
    compiled = torch.compile(remap._lookup, dynamic=False)
    gap = (compiled(x, lut, shift) - remap._lookup(x, lut, shift)).abs().max().item()
    print(f"pixel pass: torch.compile took {time.perf_counter() - start:.1f} s, max difference {gap:.1e}")
    for name, fn in (("eager", remap._lookup), ("compiled", compiled)):
        after = []
        for _ in range(repeats):
            model_step()
            after.append(_call(lambda fn=fn: fn(x, lut, shift))[0])  # called at once: bind this iteration's fn
        alone = [_call(lambda fn=fn: fn(x, lut, shift))[0] for _ in range(repeats)]
        print(f"pixel pass {name:<9} after a U-Net step {np.median(after) * 1e6:7.0f} us, "
              f"back to back {np.median(alone) * 1e6:7.0f} us")


def main(argv: list[str] | None = None) -> int:
    global CURVE_SAMPLES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30,
                        help="calls per path and case in training; "
                             "back to back: batched calls per loop (3 loops), reference calls in all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="also time TOWER's pixel pass under torch.compile")
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

    model_step = unet_step(x)

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
          f"device {args.device}, reference curve samples {args.curve_samples}, load average {load}")
    print(f"{'':<13}{'--- in training (after a U-Net step) ---':>46}{'---- back to back ----':>30}")
    print(f"{'tasks':<13}{'reference p/s':>15}{'batched p/s':>13}{'speed-up':>10}{'faults':>8}"
          f"{'reference p/s':>15}{'batched p/s':>13}{'speed-up':>10}")
    for name, ref_fn, fast_fn in cases:
        ref_fn(), fast_fn()  # first calls build caches
        t_ref, t_fast, faults = in_training(ref_fn, fast_fn, model_step, args.repeats)
        b_ref, b_fast = back_to_back(ref_fn, fast_fn, args.repeats)
        print(f"{name:<13}{args.batch / t_ref:>15.0f}{args.batch / t_fast:>13.0f}{t_ref / t_fast:>9.1f}x{faults:>8.0f}"
              f"{args.batch / b_ref:>15.0f}{args.batch / b_fast:>13.0f}{b_ref / b_fast:>9.1f}x")
    errors = remap_accuracy()
    print(f"remap vs Models Genesis's curve (100,000 samples): mean error {errors.mean():.1e}, "
          f"99th percentile {np.percentile(errors, 99):.1e}, max {errors.max():.1e}")
    if args.compile:
        compiled_pixel_pass(x, gen, model_step, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
