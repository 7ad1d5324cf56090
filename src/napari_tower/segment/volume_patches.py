"""Training patches from labelled volumes for 3D fine-tuning (issue 17).

A user typically paints two or three slices of a stack. Uniform 3D draws would mostly hold no label
at all, so every patch is placed around an annotated voxel: a labelled slice is drawn (volumes in
proportion to their labelled slices), then one of its annotated pixels, and the patch is shifted
randomly so that voxel lies anywhere inside it. Images stay where they are (zarr, dask, memmap):
only the patches drawn are read and normalised. Targets are class maps (Z, Y, X) in the sparse convention,
or a shape head's float maps (T, Z, Y, X) whose weights say which voxels were painted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.lazy import read_region
from ..data.normalise import Normalisation
from ..data.patch_augment import augment_patch
from ..errors import TowerError

# Annotated pixels remembered per labelled slice (a seeded subset for dense slices): bounds the index.
_MAX_POINTS_PER_SLICE = 4096


@dataclass
class LabelledVolume:
    """One training volume: image (Z, C, Y, X), its normalisation, targets and loss weights (Z, Y, X)."""

    image: Any  # array-like (Z, C, Y, X)
    norm: Normalisation
    # uint8 (Z, Y, X) in the sparse convention (0 unannotated, 1 background, 2.. classes), or a shape head's
    # float (T, Z, Y, X) maps, whose annotated voxels are those of weight > 0 (weights are then required)
    targets: np.ndarray
    weights: np.ndarray | None = None  # float32 (Z, Y, X)

    def annotated(self) -> np.ndarray:
        """(Z, Y, X) bool: the voxels that carry loss."""
        if self.targets.ndim == 4:
            if self.weights is None:
                raise TowerError("a shape head's volume targets need weights that mark the painted voxels")
            return self.weights > 0
        return self.targets > 0 if self.weights is None else (self.targets > 0) & (self.weights > 0)


class VolumePatchSampler:
    """Draws (C, patch_z, patch, patch) patches that each hold annotated voxels, reproducibly from a seed.

    Class targets come back as "labels" (n, Z, P, P); a shape head's float targets as "targets" (n, T, Z, P, P).

    Augmentation: rot90 and a flip in-plane, and a flip along z (the z axis is never swapped with
    y or x, so anisotropic voxels stay as they are). Volumes shorter than `patch_z` are padded in z
    (the image by its edge slices, the targets as unannotated).
    """

    def __init__(self, volumes: Sequence[LabelledVolume], patch: int, patch_z: int, augment: bool = True,
                 intensity: float = 0.0, seed: int = 0) -> None:
        if not volumes:
            raise TowerError("no labelled volumes to sample from: give at least one volume with labels")
        self.volumes = list(volumes)
        self.patch, self.patch_z = int(patch), int(patch_z)
        self.augment, self.intensity = augment, intensity
        channels = {int(v.image.shape[1]) for v in self.volumes}
        if len(channels) > 1:
            raise TowerError(f"volumes have different channel counts {sorted(channels)}: "
                             "use volumes with the same channels")
        self.channels = channels.pop()
        shape_targets = {v.targets.ndim == 4 for v in self.volumes}
        if len(shape_targets) > 1:
            raise TowerError("volumes mix class targets and shape-head targets: give one kind")
        self.shape_targets = shape_targets.pop()
        rng = np.random.default_rng(seed)
        # (volume, slice, annotated (y, x) points) for every slice holding a loss-carrying voxel.
        self.slices: list[tuple[int, int, np.ndarray]] = []
        for vi, v in enumerate(self.volumes):
            z, _, h, w = v.image.shape
            if h < self.patch or w < self.patch:
                raise TowerError(f"a volume is {h} x {w} px, smaller than the {self.patch} px patch: "
                                 f"choose a patch size of at most {min(h, w) // 16 * 16} (--patch)")
            if v.targets.shape[-3:] != (z, h, w):
                raise TowerError(f"labels have shape {v.targets.shape[-3:]} but their volume is {z} x {h} x {w}: "
                                 "give labels of the same size as their volume")
            carries = v.annotated()
            for zi in np.flatnonzero(carries.reshape(z, -1).any(axis=1)):
                points = np.argwhere(carries[zi])
                if len(points) > _MAX_POINTS_PER_SLICE:
                    points = points[rng.choice(len(points), _MAX_POINTS_PER_SLICE, replace=False)]
                self.slices.append((vi, int(zi), points.astype(np.int32)))
        if not self.slices:
            raise TowerError("the labels hold no annotated voxel: paint at least one slice")

    @property
    def labelled_slices(self) -> int:
        """How many (volume, slice) pairs hold annotations: what patches are centred on."""
        return len(self.slices)

    def _corner(self, size: int, extent: int, at: int, rng: np.random.Generator) -> int:
        """Start of a window of `size` within [0, extent) that contains `at` (anywhere in the window)."""
        if extent <= size:
            return 0
        lo, hi = max(0, at - size + 1), min(at, extent - size)
        return int(rng.integers(lo, hi + 1))

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`n` patches: "image" (n, C, Z, P, P) in [0, 1], "labels" (n, Z, P, P) int64 (or a shape head's
        "targets" (n, T, Z, P, P) float32), "weights" (n, Z, P, P)."""
        p, pz = self.patch, self.patch_z
        images = np.empty((n, self.channels, pz, p, p), np.float32)
        lead = (self.volumes[0].targets.shape[0],) if self.shape_targets else ()
        labels = np.zeros((n, *lead, pz, p, p), np.float32 if self.shape_targets else np.int64)
        weights = np.ones((n, pz, p, p), np.float32)
        for i in range(n):
            vi, zi, points = self.slices[int(rng.integers(len(self.slices)))]
            y0, x0 = points[int(rng.integers(len(points)))]
            v = self.volumes[vi]
            z, _, h, w = v.image.shape
            zs, y, x = self._corner(pz, z, zi, rng), self._corner(p, h, int(y0), rng), self._corner(p, w, int(x0), rng)
            ze = min(z, zs + pz)
            img = v.norm.apply(read_region(v.image, (slice(zs, ze), slice(None), slice(y, y + p), slice(x, x + p))))
            img = np.moveaxis(img, 1, 0)  # (C, Z, Y, X)
            lab = np.asarray(v.targets[..., zs:ze, y: y + p, x: x + p])
            wts = None if v.weights is None else np.asarray(v.weights[zs:ze, y: y + p, x: x + p], np.float32)
            if ze - zs < pz:  # a volume thinner than the patch
                img = np.pad(img, ((0, 0), (0, pz - (ze - zs)), (0, 0), (0, 0)), mode="edge")
                lab = np.pad(lab, ((0, 0),) * len(lead) + ((0, pz - (ze - zs)), (0, 0), (0, 0)))
                wts = None if wts is None else np.pad(wts, ((0, pz - (ze - zs)), (0, 0), (0, 0)))
            if self.augment:
                img, (lab, wts), _ = augment_patch(img, [lab, wts], rng, self.intensity, volume=True)
            images[i], labels[i] = img, lab
            if wts is not None:
                weights[i] = wts
        return {"image": images, "targets" if self.shape_targets else "labels": labels, "weights": weights}

    @staticmethod
    def foreground_classes(batch: dict[str, Any]) -> Any:
        """A shape head's validation targets in the class convention (`ShapeObjective.foreground_classes`)."""
        from .shape_training import ShapeObjective

        return ShapeObjective.foreground_classes(batch)


__all__ = ["LabelledVolume", "VolumePatchSampler"]
