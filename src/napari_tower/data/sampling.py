"""Seeded random patch sampling with an optional structure prior.

The prior is our reading of TOWER's knowledge-based sample-space
diversification: patch centres are drawn preferentially where the image has
texture (local standard deviation), with a floor of uniform draws so
background is still seen. Images stay as they are (numpy, zarr, memmap): only
the patches drawn are read and normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import TowerError
from .annotated import AnnotatedPixels
from .io import Image
from .lazy import read_region
from .normalise import Normalisation
from .patch_augment import augment_patch

# Bounds on the structure prior's index for huge data (see PatchSampler._index_planes).
_MAX_GRID_CELLS = 2**18
_MAX_SCORED_PLANES = 64


@dataclass
class Source:
    """One training image with its normalisation and, for fine-tuning, its targets."""

    image: Image
    norm: Normalisation
    labels: Any | None = None  # (P, Y, X) integer targets, 0 = unannotated where sparse
    weights: Any | None = None  # (P, Y, X) per-pixel loss weights


def _score_grid(plane: np.ndarray, stride: int, window: int) -> np.ndarray:
    """Local standard deviation on a coarse grid: how much structure surrounds each point."""
    small = plane[:, ::stride, ::stride].mean(axis=0)
    size = max(1, window // stride)
    mean = ndimage.uniform_filter(small, size)
    sq = ndimage.uniform_filter(small * small, size)
    return np.sqrt(np.clip(sq - mean * mean, 0, None))


class PatchSampler:
    """Draws augmented (flip/rot90) patches from a list of sources, reproducibly from a seed."""

    def __init__(
        self,
        sources: Sequence[Source],
        patch: int,
        structure_prior: bool = True,
        prior_floor: float = 0.25,
        augment: bool = True,
        intensity: float = 0.0,
    ) -> None:
        if not sources:
            raise TowerError("no images to sample from: add at least one image")
        self.sources = list(sources)
        self.patch = patch
        self.augment = augment
        self.intensity = intensity
        self.prior_floor = prior_floor if structure_prior else 1.0
        channels = {s.image.channels for s in self.sources}
        if len(channels) > 1:
            raise TowerError(f"images have different channel counts {sorted(channels)}: "
                             "use images with the same channels")
        self.channels = channels.pop()
        self._index_planes()
        self._index_annotations()

    def _index_planes(self) -> None:
        """List every plane and, for the prior, a coarse grid of structure scores per plane.

        Scoring reads a strided copy of each plane, so for huge data (whole slides, long stacks) the
        grid is kept to about _MAX_GRID_CELLS cells per plane and at most _MAX_SCORED_PLANES evenly
        spaced planes are scored; prior draws come from those, uniform draws from all planes.
        """
        planes: list[tuple[int, int]] = []
        for si, s in enumerate(self.sources):
            p, _, h, w = s.image.shape
            if h < self.patch or w < self.patch:
                raise TowerError(
                    f"{s.image.source} is {h} x {w} pixels, smaller than the {self.patch} px patch: "
                    f"choose a patch size of at most {min(h, w) // 16 * 16} (--patch)"
                )
            planes.extend((si, pi) for pi in range(p))
        self.planes = planes
        largest = max(s.image.shape[2] * s.image.shape[3] for s in self.sources)
        self.stride = max(4, self.patch // 8, int(np.ceil(np.sqrt(largest / _MAX_GRID_CELLS))))
        # Per scored plane: its index in self.planes, the grid shape, cumulative scores and their sum.
        self.scored: list[int] = []
        self.candidates: list[tuple[tuple[int, int], np.ndarray, float]] = []
        cum: list[float] = []
        total = 0.0
        if self.prior_floor < 1.0:
            if len(planes) > _MAX_SCORED_PLANES:
                spaced = np.linspace(0, len(planes) - 1, _MAX_SCORED_PLANES).round().astype(int)
                self.scored = np.unique(spaced).tolist()
            else:
                self.scored = list(range(len(planes)))
            for k in self.scored:
                si, pi = planes[k]
                s = self.sources[si]
                coarse = s.norm.apply(read_region(s.image.data, (pi, slice(None), slice(None, None, self.stride),
                                                                 slice(None, None, self.stride))))
                score = _score_grid(coarse, 1, max(1, self.patch // self.stride))
                flat = score.ravel()
                self.candidates.append((score.shape, np.cumsum(flat), float(flat.sum())))
                total += float(score.sum())
                cum.append(total)
        self.plane_cum = np.asarray(cum)

    def _index_annotations(self) -> None:
        """Where labels carry loss. When some plane is only partly annotated (painted regions, scribbles,
        corrected tiles), planes are drawn by their annotated pixels and patches hold some of them; with every
        plane fully annotated, draws stay uniform."""
        self.annotated: list[AnnotatedPixels] | None = None
        if self.sources[0].labels is None:
            return
        index = []
        for si, pi in self.planes:
            s = self.sources[si]
            index.append(AnnotatedPixels.of(np.asarray(s.labels[pi]),
                                            None if s.weights is None else np.asarray(s.weights[pi])))
        if all(a.dense for a in index):
            return
        self.annotated = index
        self.annotated_cum = np.cumsum([a.count for a in index])
        if self.annotated_cum[-1] <= 0:
            raise TowerError("the labels annotate no pixel: paint at least one object or background region")

    def _pick_corner(self, rng: np.random.Generator) -> tuple[int, int, int, int]:
        p = self.patch
        if self.annotated is not None:
            k = int(np.searchsorted(self.annotated_cum, rng.random() * self.annotated_cum[-1], side="right"))
            k = min(k, len(self.planes) - 1)
            si, pi = self.planes[k]
            y, x = self.annotated[k].corner(p, rng)
            return si, pi, y, x
        use_prior = self.prior_floor < 1.0 and rng.random() >= self.prior_floor and self.plane_cum[-1] > 0
        if use_prior:
            k = int(np.searchsorted(self.plane_cum, rng.random() * self.plane_cum[-1], side="right"))
            k = min(k, len(self.scored) - 1)
            si, pi = self.planes[self.scored[k]]
            shape, cumulative, flat_sum = self.candidates[k]
            idx = int(np.searchsorted(cumulative, rng.random() * flat_sum, side="right"))
            cy, cx = np.unravel_index(min(idx, cumulative.size - 1), shape)
            _, _, h, w = self.sources[si].image.shape
            y = int(np.clip(cy * self.stride - p // 2 + rng.integers(self.stride), 0, h - p))
            x = int(np.clip(cx * self.stride - p // 2 + rng.integers(self.stride), 0, w - p))
        else:
            si, pi = self.planes[int(rng.integers(len(self.planes)))]
            _, _, h, w = self.sources[si].image.shape
            y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
        return si, pi, y, x

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`n` patches: "image" (n, C, P, P) float32 in [0, 1], plus "labels"/"weights" where sources have them."""
        p = self.patch
        images = np.empty((n, self.channels, p, p), np.float32)
        has_labels = self.sources[0].labels is not None
        labels = np.zeros((n, p, p), np.int64) if has_labels else None
        weights = np.ones((n, p, p), np.float32) if has_labels else None
        for i in range(n):
            si, pi, y, x = self._pick_corner(rng)
            s = self.sources[si]
            img = s.norm.apply(read_region(s.image.data, (pi, slice(None), slice(y, y + p), slice(x, x + p))))
            lab = np.asarray(s.labels[pi, y: y + p, x: x + p]) if has_labels else None
            wts = np.asarray(s.weights[pi, y: y + p, x: x + p]) if has_labels and s.weights is not None else None
            if self.augment:
                img, (lab, wts), _ = augment_patch(img, [lab, wts], rng, self.intensity)
            images[i] = img
            if labels is not None:
                labels[i] = lab
                if wts is not None:
                    weights[i] = wts
        out = {"image": images}
        if labels is not None:
            out["labels"] = labels
            out["weights"] = weights
        return out


