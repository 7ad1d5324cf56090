"""Seeded random sub-volume sampling with the structure prior, for 3D training (issue 17).

The 3D twin of `PatchSampler`: same sources, same `sample(n, rng) -> dict` call, but each
patch is a (C, patch_z, patch, patch) block of one volume (`Image.volume(k)`, planes
z*k .. z*(k+1)-1). The prior scores a coarse 3D grid by local standard deviation, so blocks
are drawn preferably where the volume has texture, with a `prior_floor` share of uniform
draws. Augmentation is what keeps anisotropic data valid: rot90 and flips in the (y, x)
plane, and flips along z (never a rotation that would swap z with y or x).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..errors import TowerError
from .lazy import read_region
from .patch_augment import augment_patch
from .sampling import _MAX_GRID_CELLS, Source

# Bound on the volumes scored for the prior (uniform draws still use all volumes).
_MAX_SCORED_VOLUMES = 16


def _score_grid3d(volume: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """Local standard deviation over `window` cells of a coarse (Z, C, Y, X) volume, averaged over channels."""
    small = volume.mean(axis=1)
    mean = ndimage.uniform_filter(small, window)
    sq = ndimage.uniform_filter(small * small, window)
    return np.sqrt(np.clip(sq - mean * mean, 0, None))


class VolumeSampler:
    """Draws augmented (C, patch_z, patch, patch) sub-volumes from a list of sources, reproducibly from a seed.

    Sources' images are read as volumes (`Image.z_size` slices each). Labels and weights, where
    given, are (P, Y, X) per plane like `PatchSampler`'s and are cut and augmented with the image.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        patch: int,
        patch_z: int,
        structure_prior: bool = True,
        prior_floor: float = 0.25,
        augment: bool = True,
        intensity: float = 0.0,
    ) -> None:
        if not sources:
            raise TowerError("no images to sample from: add at least one image")
        self.sources = list(sources)
        self.patch = int(patch)
        self.patch_z = int(patch_z)
        self.augment = augment
        self.intensity = intensity
        self.prior_floor = prior_floor if structure_prior else 1.0
        channels = {s.image.channels for s in self.sources}
        if len(channels) > 1:
            raise TowerError(f"images have different channel counts {sorted(channels)}: "
                             "use images with the same channels")
        self.channels = channels.pop()
        self._index_volumes()

    def _index_volumes(self) -> None:
        """List every volume and, for the prior, a coarse 3D grid of structure scores per scored volume."""
        volumes: list[tuple[int, int]] = []
        for si, s in enumerate(self.sources):
            _, _, h, w = s.image.shape
            z = max(1, s.image.z_size)
            if z < self.patch_z:
                what = "a single plane (2D)" if z == 1 else f"{z} slices thick"
                raise TowerError(
                    f"{s.image.source} is {what}, thinner than the 3D patch depth of {self.patch_z} slices: "
                    f"lower --patch-z to at most {z}, or train in 2D (--dims 2d)"
                )
            if h < self.patch or w < self.patch:
                raise TowerError(
                    f"{s.image.source} is {h} x {w} pixels, smaller than the {self.patch} px patch: "
                    f"choose a patch size of at most {min(h, w) // 16 * 16} (--patch)"
                )
            volumes.extend((si, k) for k in range(s.image.n_volumes))
        self.volumes = volumes
        largest = max(s.image.shape[2] * s.image.shape[3] for s in self.sources)
        self.stride = max(4, self.patch // 8, int(np.ceil(np.sqrt(largest / _MAX_GRID_CELLS))))
        deepest = max(max(1, s.image.z_size) for s in self.sources)
        cells_per_slice = largest / self.stride ** 2
        # z stride: a few cells per patch depth, and the whole grid within _MAX_GRID_CELLS
        self.stride_z = max(1, self.patch_z // 4, int(np.ceil(deepest * cells_per_slice / _MAX_GRID_CELLS)))
        self.scored: list[int] = []
        self.candidates: list[tuple[tuple[int, ...], np.ndarray, float]] = []
        cum: list[float] = []
        total = 0.0
        if self.prior_floor < 1.0:
            if len(volumes) > _MAX_SCORED_VOLUMES:
                spaced = np.linspace(0, len(volumes) - 1, _MAX_SCORED_VOLUMES).round().astype(int)
                self.scored = np.unique(spaced).tolist()
            else:
                self.scored = list(range(len(volumes)))
            window = (max(1, self.patch_z // self.stride_z), max(1, self.patch // self.stride),
                      max(1, self.patch // self.stride))
            for k in self.scored:
                si, vi = volumes[k]
                s = self.sources[si]
                z = max(1, s.image.z_size)
                coarse = s.norm.apply(read_region(s.image.data, (
                    slice(vi * z, (vi + 1) * z, self.stride_z), slice(None),
                    slice(None, None, self.stride), slice(None, None, self.stride))))
                score = _score_grid3d(coarse, window)
                flat = score.ravel()
                self.candidates.append((score.shape, np.cumsum(flat), float(flat.sum())))
                total += float(flat.sum())
                cum.append(total)
        self.volume_cum = np.asarray(cum)

    def _pick_corner(self, rng: np.random.Generator) -> tuple[int, int, int, int, int]:
        """(source, volume, z, y, x) of a patch's corner: from the prior, or uniform for a `prior_floor` share."""
        p, pz = self.patch, self.patch_z
        use_prior = self.prior_floor < 1.0 and rng.random() >= self.prior_floor and self.volume_cum[-1] > 0
        if use_prior:
            k = int(np.searchsorted(self.volume_cum, rng.random() * self.volume_cum[-1], side="right"))
            k = min(k, len(self.scored) - 1)
            si, vi = self.volumes[self.scored[k]]
            shape, cumulative, flat_sum = self.candidates[k]
            idx = int(np.searchsorted(cumulative, rng.random() * flat_sum, side="right"))
            cz, cy, cx = np.unravel_index(min(idx, cumulative.size - 1), shape)
            image = self.sources[si].image
            _, _, h, w = image.shape
            depth = max(1, image.z_size)
            z = int(np.clip(cz * self.stride_z - pz // 2 + rng.integers(self.stride_z), 0, depth - pz))
            y = int(np.clip(cy * self.stride - p // 2 + rng.integers(self.stride), 0, h - p))
            x = int(np.clip(cx * self.stride - p // 2 + rng.integers(self.stride), 0, w - p))
        else:
            si, vi = self.volumes[int(rng.integers(len(self.volumes)))]
            image = self.sources[si].image
            _, _, h, w = image.shape
            depth = max(1, image.z_size)
            z = int(rng.integers(depth - pz + 1))
            y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
        return si, vi, z, y, x

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`n` patches: "image" (n, C, Z, P, P) float32 in [0, 1], plus "labels"/"weights" (n, Z, P, P) where
        the sources have them."""
        p, pz = self.patch, self.patch_z
        images = np.empty((n, self.channels, pz, p, p), np.float32)
        has_labels = self.sources[0].labels is not None
        labels = np.zeros((n, pz, p, p), np.int64) if has_labels else None
        weights = np.ones((n, pz, p, p), np.float32) if has_labels else None
        for i in range(n):
            si, vi, z, y, x = self._pick_corner(rng)
            s = self.sources[si]
            z0 = vi * max(1, s.image.z_size) + z
            planes = slice(z0, z0 + pz)
            img = s.norm.apply(read_region(s.image.data, (planes, slice(None), slice(y, y + p), slice(x, x + p))))
            img = img.transpose(1, 0, 2, 3)  # (Z, C, Y, X) -> (C, Z, Y, X)
            lab = np.asarray(s.labels[planes, y: y + p, x: x + p]) if has_labels else None
            wts = np.asarray(s.weights[planes, y: y + p, x: x + p]) if has_labels and s.weights is not None else None
            if self.augment:
                img, (lab, wts), _ = augment_patch(img, [lab, wts], rng, self.intensity, volume=True)
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


