"""Scaled copies of the labelled planes, so a model fine-tuned on one object size segments others (issue 21).

A model fine-tuned on one crowded image of large nuclei (DSB2018: median 537 px) put a rim around the
small nuclei of sparse images (64-88 px): +40% area at that size, and up to 3.3x the true foreground on
one seed. Training also on copies of the labelled planes scaled by 1/zoom .. zoom shows it objects of
other sizes with exact targets: instance labels are rescaled as ids (nearest) and their boundary class
is computed afterwards at the new size, so a downscaled copy keeps a whole one-pixel boundary ring
instead of a broken, subsampled one. Copies live in memory, so their total size is capped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data import Image, Normalisation, Source, from_array
from .targets import encode_targets

# Pixels all copies together may hold (about 256 MB of float32 for one channel); beyond it, only a
# seeded subset of the labelled planes gets copies.
MAX_COPY_PIXELS = 64 * 2**20


def zoom_scales(zoom: float) -> tuple[float, ...]:
    """The copies' scale factors besides the original: 1/zoom, 1/sqrt(zoom), sqrt(zoom), zoom (none for 1)."""
    if zoom <= 1.0:
        return ()
    root = math.sqrt(zoom)
    return (1.0 / zoom, 1.0 / root, root, zoom)


def _resize(array: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    from skimage.transform import resize

    out_shape = array.shape[:-2] + shape
    smaller = shape[0] < array.shape[-2]
    return resize(array, out_shape, order=order, preserve_range=True, anti_aliasing=bool(order and smaller),
                  mode="edge")


def zoomed_sources(images: Sequence[Image], norms: Sequence[Normalisation], raw_labels: Sequence[np.ndarray],
                   items: Sequence[tuple[int, int, np.ndarray, np.ndarray | None]], kind: str, zoom: float,
                   min_side: int, seed: int = 0) -> list[Source]:
    """Training sources for scaled copies of the planes in `items` ((image, plane, targets, weights)).

    `raw_labels` are the labels as the user gave them (per image, (P, Y, X)); "instance" targets are
    re-encoded from rescaled ids, other kinds (class maps) are rescaled directly by nearest neighbour.
    Copies with a side under `min_side` (the patch) are skipped.
    """
    scales = zoom_scales(zoom)
    if not scales or not items:
        return []
    per_plane = [sum(math.prod(images[i].shape[2:]) * s * s for s in scales) for i, _, _, _ in items]
    order = np.random.default_rng(seed).permutation(len(items))
    budget, picked = MAX_COPY_PIXELS, []
    for k in order:
        if per_plane[k] <= budget:
            picked.append(int(k))
            budget -= per_plane[k]
    sources: list[Source] = []
    for k in sorted(picked):
        i, p, targets, weights = items[k]
        plane = np.asarray(images[i].data[p], np.float32)
        h, w = plane.shape[-2:]
        for s in scales:
            shape = (round(h * s), round(w * s))
            if min(shape) < min_side:
                continue
            if kind == "instance":
                ids = _resize(np.asarray(raw_labels[i][p]), shape, order=0).astype(np.int64)
                scaled_targets = encode_targets(ids[None], kind)
            else:
                scaled_targets = _resize(np.asarray(targets), shape, order=0).astype(np.asarray(targets).dtype)
            scaled_weights: Any = None if weights is None else _resize(weights, shape, order=0).astype(np.float32)
            image = from_array(_resize(plane, shape, order=1).astype(np.float32)[None],
                               f"{images[i].source} x{s:.2f}", axes="ZCYX")
            sources.append(Source(image, norms[i], scaled_targets, scaled_weights))
    return sources
