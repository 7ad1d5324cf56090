"""How long object matching and post-processing tuning take, and what counting instead of sorting saves.

Every fine-tune and retrain of an instance head tunes its post-processing on the labelled planes
(`segment.shape_training.tune_postprocess`): 40 grid points (8 seed thresholds x 5 minimum sizes) each
matched against the labels with `segment.metrics.overlaps`. That table used to come from `np.unique`
(a sort of every pixel, twice for the ids and once for the pairs); it now counts with `np.bincount`
when ids are 1..n, and sorts only for sparse ids. This script times both on the same label images in
one run, so the ratio holds on any machine, and times a whole tuning on synthetic nuclei.

    python benchmarks/bench_matching.py [--size 512] [--repeats 40]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from machine import cpu_name

from napari_tower.samples import synthetic_nuclei
from napari_tower.segment import metrics


def sorted_overlaps(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, np.ndarray]:
    """The table as it was built before: `np.unique` for the ids and for the pairs."""
    def compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
        ids, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(-1).astype(np.int64)
        return (inverse - 1, ids.size - 1) if ids.size and ids[0] == 0 else (inverse, ids.size)

    pc, n_pred = compact(pred)
    tc, n_true = compact(truth)
    both = (pc >= 0) & (tc >= 0)
    keys, inter = np.unique(pc[both] * max(n_true, 1) + tc[both], return_counts=True)
    return n_pred, n_true, inter


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    _, truth = synthetic_nuclei((args.size, args.size), args.size * args.size // 3300, seed=3)
    pred = np.roll(truth, 2, axis=1)  # a prediction a little off: every object overlaps one or two
    counted = metrics.overlaps(pred, truth)
    n_pred, n_true, inter = sorted_overlaps(pred, truth)
    assert (counted.n_pred, counted.n_true, counted.iou.size) == (n_pred, n_true, inter.size)
    new = timed(lambda: metrics.overlaps(pred, truth), args.repeats)
    old = timed(lambda: sorted_overlaps(pred, truth), args.repeats)
    sparse = np.where(pred > 0, pred.astype(np.int64) * 1_000_003, 0)  # ids far apart: the sorting path
    new_sparse = timed(lambda: metrics.overlaps(sparse, truth), args.repeats)
    print(f"{cpu_name()}; {args.size} x {args.size} labels, {n_true} objects")
    print(f"overlaps: counting {new * 1000:.1f} ms, sorting (before) {old * 1000:.1f} ms: {old / new:.1f}x; "
          f"sparse ids {new_sparse * 1000:.1f} ms")

    from napari_tower.segment.shape_heads import CappedDistanceHead
    from napari_tower.segment.shape_training import tune_postprocess

    head = CappedDistanceHead()
    targets = head.encode(truth)  # foreground and capped distance as a perfect prediction, behind a background
    outputs = np.concatenate([1 - targets[:1], targets[:2]])
    t0 = time.perf_counter()
    chosen = tune_postprocess(head, [outputs], [truth])
    print(f"tune_postprocess (capped head, 40 grid points, one {args.size} x {args.size} plane): "
          f"{time.perf_counter() - t0:.2f} s, F1 {chosen['f1']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
