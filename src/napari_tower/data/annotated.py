"""Where a labelled plane carries loss, and patch corners drawn around it.

A user who paints a few objects or corrects one region of a large image annotates a small part of it;
patches drawn uniformly would then mostly hold unannotated pixels and teach nothing. Fine-tuning samplers
(`PatchSampler` with labels, `ShapeObjective`) therefore centre each patch, with some jitter, on an annotated
pixel of a sparsely annotated plane. The index is a strided grid, so huge planes stay cheap to index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_CELLS = 2**18  # grid points indexed per plane (int32 pairs: 2 MB at most)


@dataclass(frozen=True)
class AnnotatedPixels:
    """The annotated pixels of one plane: all of them (dense), or grid points where loss is carried."""

    shape: tuple[int, int]
    stride: int
    cells: np.ndarray  # (N, 2) int32 grid coordinates (y, x) of annotated points; empty when dense
    count: float  # annotated pixels (estimated from the grid when stride > 1)
    dense: bool

    @classmethod
    def of(cls, labels: np.ndarray | None, weights: np.ndarray | None = None,
           max_cells: int = MAX_CELLS) -> AnnotatedPixels:
        """Index a plane whose pixels carry loss where `labels > 0` (0 = unannotated) and `weights > 0`."""
        plane = labels if labels is not None else weights
        if plane is None:
            raise ValueError("give labels, weights or both")
        h, w = np.shape(plane)[-2:]
        stride = max(1, int(np.ceil(np.sqrt(h * w / max_cells))))
        mask = np.ones((h, w), bool) if labels is None else np.asarray(labels) > 0
        if weights is not None:
            mask &= np.asarray(weights) > 0
        if mask.all():
            return cls((h, w), 1, np.empty((0, 2), np.int32), float(h * w), True)
        grid = mask[::stride, ::stride]
        cells = np.argwhere(grid).astype(np.int32)
        return cls((h, w), stride, cells, float(mask.sum()), False)

    def corner(self, patch: int, rng: np.random.Generator) -> tuple[int, int]:
        """The top-left corner of a `patch`-sized window: uniform on a dense plane; on a sparse one it holds an
        annotated pixel (drawn uniformly among them) at a jittered offset from its centre."""
        h, w = self.shape
        if self.dense or not len(self.cells):
            return int(rng.integers(h - patch + 1)), int(rng.integers(w - patch + 1))
        cy, cx = (self.cells[int(rng.integers(len(self.cells)))] * self.stride).tolist()
        if self.stride > 1:
            cy, cx = min(h - 1, cy + int(rng.integers(self.stride))), min(w - 1, cx + int(rng.integers(self.stride)))
        jitter = patch // 4
        y = int(np.clip(cy - patch // 2 + rng.integers(-jitter, jitter + 1), 0, h - patch))
        x = int(np.clip(cx - patch // 2 + rng.integers(-jitter, jitter + 1), 0, w - patch))
        return y, x


__all__ = ["AnnotatedPixels"]
