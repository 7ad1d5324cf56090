"""Where to correct next: an uncertainty map of a prediction and the most uncertain region not yet corrected.

The correct-and-retrain loop gains most from corrections where the model is least sure. Two maps:

- "entropy": the entropy of the predicted class probabilities, free once a prediction exists. For an
  instance model (background / interior / boundary) it is the binary entropy of the foreground probability,
  the decision Dice scores, so the always-ambiguous thin boundary class does not dominate the map.
- "flips": the disagreement of test-time flips (the per-pixel standard deviation of the foreground
  probability over the identity and 3 flips), 4 predictions instead of 1.

Both are in [0, 1] (1 = as uncertain as it gets). `suggest_region` scores a grid of square regions by their
mean uncertainty and returns the best one that overlaps no corrected region; `random_region` is the baseline
a user without guidance would follow. The widget's **Next region to correct** and benchmarks/bench_loop.py
both call these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

UNCERTAINTY_METHODS = ("entropy", "flips")


@dataclass(frozen=True)
class Region:
    """A square region of one plane: rows y..y+size, columns x..x+size (clipped to the plane)."""

    plane: int
    y: int
    x: int
    size: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.size), slice(self.x, self.x + self.size)

    def overlaps(self, other: Region) -> bool:
        return (self.plane == other.plane and self.y < other.y + other.size and other.y < self.y + self.size
                and self.x < other.x + other.size and other.x < self.x + self.size)

    @property
    def centre(self) -> tuple[float, float]:
        return self.y + self.size / 2, self.x + self.size / 2


def foreground_probability(probs: np.ndarray, target: str) -> np.ndarray | None:
    """P(foreground) of (K, Y, X) class probabilities, or None for a multi-class semantic model."""
    if target == "instance" or probs.shape[0] == 2:
        return 1.0 - probs[0]
    return None


def entropy_map(probs: np.ndarray, target: str = "instance") -> np.ndarray:
    """Per-pixel uncertainty in [0, 1] of (K, Y, X) probabilities (see the module docstring)."""
    probs = np.asarray(probs, np.float32)
    fg = foreground_probability(probs, target)
    if fg is not None:
        p = np.clip(fg, 1e-6, 1 - 1e-6)
        return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).astype(np.float32)
    k = probs.shape[0]
    p = np.clip(probs, 1e-6, 1.0)
    return (-(p * np.log(p)).sum(0) / np.log(k)).astype(np.float32)


def flip_disagreement(predict: Callable[[np.ndarray], np.ndarray], plane: np.ndarray,
                      target: str = "instance") -> np.ndarray:
    """Per-pixel disagreement in [0, 1] of test-time flips of one (C, Y, X) plane.

    predict: maps a (C, Y, X) plane to (K, Y, X) probabilities (e.g. a bound `Predictor.probabilities`).
    The foreground probability (or, for multi-class models, the probability of the identity's winning class)
    is predicted on the plane flipped along Y, X and both, flipped back, and its standard deviation over the
    4 views doubled (the largest possible standard deviation of values in [0, 1] is 0.5).
    """
    plane = np.asarray(plane)
    views = []
    winner = None
    for axes in ((), (-2,), (-1,), (-2, -1)):
        flipped = np.flip(plane, axes) if axes else plane
        probs = np.asarray(predict(np.ascontiguousarray(flipped)))
        probs = np.flip(probs, axes) if axes else probs
        fg = foreground_probability(probs, target)
        if fg is None:
            if winner is None:
                winner = probs.argmax(0)
            fg = np.take_along_axis(probs, winner[None], 0)[0]
        views.append(fg)
    return np.clip(2.0 * np.std(np.stack(views), axis=0), 0.0, 1.0).astype(np.float32)


def candidate_regions(shape: tuple[int, int], size: int, plane: int = 0) -> list[Region]:
    """A grid of `size` regions covering a (Y, X) plane; the last row and column end at the plane's edge."""
    h, w = shape
    size = max(1, min(size, h, w))
    ys = list(range(0, h - size + 1, size))
    xs = list(range(0, w - size + 1, size))
    if ys[-1] + size < h:
        ys.append(h - size)
    if xs[-1] + size < w:
        xs.append(w - size)
    return [Region(plane, y, x, size) for y in ys for x in xs]


def _free(regions: Iterable[Region], corrected: Sequence[Region]) -> list[Region]:
    return [r for r in regions if not any(r.overlaps(c) for c in corrected)]


def suggest_region(uncertainty: Sequence[np.ndarray] | np.ndarray, size: int = 128,
                   corrected: Sequence[Region] = ()) -> Region | None:
    """The region of `size` with the highest mean uncertainty that overlaps no `corrected` region.

    uncertainty: one (Y, X) map per plane (a list for planes of different sizes, or a (P, Y, X) array).
    Returns None when every region overlaps a corrected one. Ties go to the first in plane, row, column order.
    """
    best, best_score = None, -1.0
    for p, u in enumerate(uncertainty):
        u = np.asarray(u, np.float32)
        # Summed-area table: every candidate's mean in O(1).
        sat = np.pad(u.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        for r in _free(candidate_regions(u.shape, size, p), corrected):
            y0, x0, s = r.y, r.x, r.size
            total = sat[y0 + s, x0 + s] - sat[y0, x0 + s] - sat[y0 + s, x0] + sat[y0, x0]
            score = float(total) / (s * s)
            if score > best_score:
                best, best_score = r, score
    return best


def random_region(shapes: Sequence[tuple[int, int]], size: int, corrected: Sequence[Region],
                  rng: np.random.Generator) -> Region | None:
    """A grid region drawn uniformly among those overlapping no `corrected` region (None when none is left)."""
    free = [r for p, shape in enumerate(shapes) for r in _free(candidate_regions(shape, size, p), corrected)]
    return free[int(rng.integers(len(free)))] if free else None


__all__ = ["UNCERTAINTY_METHODS", "Region", "candidate_regions", "entropy_map", "flip_disagreement",
           "foreground_probability", "random_region", "suggest_region"]
