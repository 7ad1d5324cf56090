"""Replay of the labels a segmenter was fine-tuned on, beside the user's corrections in a retrain.

A retrain learns from a few corrected regions for a few dozen steps. Learnt from alone, they pull the model
towards what they hold (for example a sparse frame's empty background) and away from what the original labels
taught: the next prediction of the other images can flood or shrink (docs/benchmarks.md, dense-to-sparse
transfer with corrections). Replaying windows of the original labels, about as many pixels as the corrections
carry, keeps both in the loss; new windows are drawn on every retrain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data import Image, from_array
from ..errors import TowerError


@dataclass
class ReplaySet:
    """An image the model was fine-tuned on and its labels, (planes, Y, X), 0 = unannotated for sparse kinds."""

    image: Image
    labels: np.ndarray


def as_replay_sets(pairs: Sequence[tuple[Image | np.ndarray, np.ndarray]]) -> list[ReplaySet]:
    """(image, labels) pairs as ReplaySets; labels of a single plane may be (Y, X)."""
    out = []
    for image, labels in pairs:
        image = image if isinstance(image, Image) else from_array(image)
        array = np.asarray(labels)
        p, _, h, w = image.shape
        if array.shape[-2:] != (h, w) or int(np.prod(array.shape[:-2])) != p:
            raise TowerError(f"the replayed labels have shape {array.shape} but {image.source} has {p} plane(s) of "
                             f"{h} x {w}: give the labels the model was fine-tuned on with their image")
        out.append(ReplaySet(image, array.reshape((p, h, w)).astype(np.int64)))
    return out


def replay_weights(sets: Sequence[ReplaySet], pixels: float, window: int, sparse: bool,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """Loss weights (1 inside drawn windows, 0 elsewhere) holding about `pixels` annotated pixels in all.

    Windows of `window` px are centred on annotated pixels drawn uniformly over all sets, so a set holds
    windows in proportion to its annotated pixels; with sparse labels only painted pixels count.
    """
    annotated = [(np.asarray(s.labels) > 0) if sparse else np.ones(s.labels.shape, bool) for s in sets]
    counts = np.array([float(a.sum()) for a in annotated])
    out = [np.zeros(s.labels.shape, np.float32) for s in sets]
    if counts.sum() <= 0 or pixels <= 0:
        return out
    budget = min(pixels, counts.sum())
    cumulative = np.cumsum(counts)
    where = [np.flatnonzero(a) for a in annotated]
    covered, tries = 0.0, 0
    while covered < budget and tries < 10_000:
        tries += 1
        # A set without annotated pixels adds nothing to `cumulative`, so it is never drawn.
        k = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(sets) - 1)
        p, y, x = np.unravel_index(where[k][int(rng.integers(len(where[k])))], annotated[k].shape)
        _, h, w = annotated[k].shape
        y0 = int(np.clip(y - window // 2, 0, max(0, h - window)))
        x0 = int(np.clip(x - window // 2, 0, max(0, w - window)))
        region = (int(p), slice(y0, y0 + window), slice(x0, x0 + window))
        covered += float((annotated[k][region] & (out[k][region] == 0)).sum())
        out[k][region] = 1.0
    for o, a in zip(out, annotated):
        o *= a
    return out


__all__ = ["ReplaySet", "as_replay_sets", "replay_weights"]
