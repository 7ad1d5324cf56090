"""Offline sample data: synthetic fluorescence nuclei with exact instance labels.

Used by `napari-tower demo`, the quick start and the napari sample menu when no
network is available; deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def synthetic_nuclei(shape: tuple[int, int] = (256, 256), n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 image of textured, blurred, touching elliptical nuclei and its int32 instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    labels = np.zeros(shape, np.int32)
    brightness = np.zeros(shape, np.float32)
    for i in range(1, n + 1):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        a, b = rng.uniform(5, 12), rng.uniform(5, 12)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        inside = (u * u + v * v <= 1) & (labels == 0)
        labels[inside] = i
        brightness[inside] = rng.uniform(0.4, 1.0)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.5)
    signal = ndimage.gaussian_filter(brightness * (1 + 0.3 * texture), 1.2)
    background = 0.08 + 0.05 * ndimage.gaussian_filter(rng.normal(0, 1, shape), 20)
    image = signal + background + rng.normal(0, 0.03, shape)
    image = np.clip(image, 0, None) * 4000 + 100
    _, relabelled = np.unique(labels, return_inverse=True)
    return image.astype(np.uint16), relabelled.reshape(shape).astype(np.int32)
