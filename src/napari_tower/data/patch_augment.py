"""The random change every training patch gets: a rigid turn shared by the image and whatever is aligned
with it (labels, weights, a shape head's targets), then a contrast and brightness change of the image alone.

Every sampler (planes, volumes, labelled volumes, shape-head targets) draws it here, so an augmentation
added once reaches all of them; before this module each kept its own copy and the shape heads missed the
intensity jitter the class heads had.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Turn:
    """k quarter turns in (y, x), then an optional flip in x and, for volumes, along z.

    z is never swapped with y or x, so anisotropic voxels stay valid.
    """

    k: int
    flip: bool
    flip_z: bool = False

    @classmethod
    def draw(cls, rng: np.random.Generator, volume: bool = False) -> Turn:
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        return cls(k, flip, bool(rng.integers(2)) if volume else False)

    def apply(self, a: np.ndarray) -> np.ndarray:
        """`a` (..., Y, X), or (..., Z, Y, X) when the turn flips z, turned as the image is."""
        a = np.rot90(a, self.k, axes=(-2, -1))
        if self.flip:
            a = a[..., ::-1]
        return a[..., ::-1, :, :] if self.flip_z else a


def augment_patch(image: np.ndarray, aligned: list[np.ndarray | None], rng: np.random.Generator,
                  intensity: float = 0.0, volume: bool = False) -> tuple[np.ndarray, list[np.ndarray | None], Turn]:
    """One random `Turn` applied to `image` and every array of `aligned` (None stays None), then
    `jitter_intensity` of the image when `intensity` > 0. Returns the turn too, for targets with their own
    rule (a StarDist head's rays turn with the image)."""
    turn = Turn.draw(rng, volume)
    image = turn.apply(image)
    aligned = [None if a is None else turn.apply(a) for a in aligned]
    if intensity > 0:
        image = jitter_intensity(image, intensity, rng)
    return image, aligned, turn


def jitter_intensity(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A random contrast (gamma and gain) and brightness (offset) change of a [0, 1] patch, clipped to [0, 1].

    `strength` s: gamma and gain log-uniform in [1 / (1 + s), 1 + s], offset uniform in [-s / 2, s / 2].
    Fine-tuning on one image otherwise lets the model key on that image's absolute background level.
    """
    lo, hi = -np.log1p(strength), np.log1p(strength)
    gamma, gain = np.exp(rng.uniform(lo, hi, 2))
    offset = rng.uniform(-strength / 2, strength / 2)
    out = np.power(np.clip(img, 0.0, 1.0), gamma, dtype=np.float32) * np.float32(gain) + np.float32(offset)
    return np.clip(out, 0.0, 1.0, out=out)


__all__ = ["Turn", "augment_patch", "jitter_intensity"]
