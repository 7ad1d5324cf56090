"""Example patches per prototype, so a user can tell what each one stands for."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import Image, compute_normalisation
from .dictionary import Assignment


@dataclass
class GalleryCrop:
    """One example of a prototype: a normalised crop and which of its pixels belong to the prototype."""

    image: np.ndarray  # (S, S) or (S, S, 3) float32 in [0, 1]
    mask: np.ndarray  # (S, S) bool: pixels whose nearest prototype is this one
    source: tuple[int, int, int, int]  # (image index, plane, y, x) of the crop's centre


def _display(image: Image, plane: int, y0: int, x0: int, size: int, norm) -> np.ndarray:
    crop = norm.apply(np.asarray(image.data[plane, :, y0:y0 + size, x0:x0 + size]), channel_axis=0)
    if crop.shape[0] == 3:
        return np.moveaxis(crop, 0, -1)
    return crop[0] if crop.shape[0] == 1 else crop.mean(0)


def gallery_crops(images: Sequence[Image], assignments: Sequence[Assignment], per_prototype: int = 4,
                  size: int = 48, seed: int = 0) -> list[list[GalleryCrop]]:
    """Up to `per_prototype` crops for each prototype (list index = prototype id - 1).

    Centres are drawn (seeded) among the pixels most clearly nearest to the prototype (the more
    certain half), from as many different images as possible.
    """
    k = assignments[0].k
    rng = np.random.default_rng(seed)
    norms = [compute_normalisation(im.data, im.source) for im in images]
    # Per image and prototype: flat indices of its confident pixels.
    candidates: list[list[np.ndarray]] = [[] for _ in range(k)]
    for a in assignments:
        nearest = a.nearest[:, 0].reshape(-1)
        certainty = (a.gaps[:, 0].reshape(-1).astype(np.float32) if a.gaps.shape[1]
                     else np.ones(nearest.size, np.float32))
        order = np.argsort(nearest, kind="stable")
        bounds = np.searchsorted(nearest[order], np.arange(k + 1))
        for proto in range(k):
            idx = order[bounds[proto]:bounds[proto + 1]]
            if idx.size:
                idx = idx[certainty[idx] >= np.median(certainty[idx])]
            candidates[proto].append(idx)
    out: list[list[GalleryCrop]] = []
    for proto in range(k):
        counts = np.array([c.size for c in candidates[proto]], float)
        crops: list[GalleryCrop] = []
        if counts.sum() > 0:
            n = per_prototype
            distinct = min(n, int((counts > 0).sum()))
            chosen = list(rng.choice(len(counts), size=distinct, replace=False, p=counts / counts.sum()))
            chosen += list(rng.choice(len(counts), size=n - distinct, p=counts / counts.sum()))
            for i in chosen:
                a, im = assignments[i], images[i]
                p, _, h, w = im.shape
                flat = int(rng.choice(candidates[proto][i]))
                plane, rest = divmod(flat, h * w)
                y, x = divmod(rest, w)
                s = min(size, h, w)
                y0, x0 = int(np.clip(y - s // 2, 0, h - s)), int(np.clip(x - s // 2, 0, w - s))
                crops.append(GalleryCrop(_display(im, plane, y0, x0, s, norms[i]),
                                         a.nearest[plane, 0, y0:y0 + s, x0:x0 + s] == proto, (i, plane, y, x)))
        out.append(crops)
    return out


def prototype_colours(k: int) -> np.ndarray:
    """(K, 3) distinct colours in [0, 1] for a gallery without a Labels layer to take them from."""
    return np.array([colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 1.0) for i in range(k)], np.float32)


def tinted(crop: GalleryCrop, colour: Sequence[float], strength: float = 0.45) -> np.ndarray:
    """The crop as (S, S, 3) uint8 RGB with the prototype's pixels tinted in `colour`."""
    rgb = crop.image if crop.image.ndim == 3 else np.repeat(crop.image[..., None], 3, axis=-1)
    rgb = rgb.astype(np.float32).copy()
    colour = np.asarray(colour, np.float32)[:3]
    rgb[crop.mask] = (1 - strength) * rgb[crop.mask] + strength * colour
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def gallery_mosaic(crops: list[list[GalleryCrop]], colours: np.ndarray | None = None, size: int = 48,
                   gap: int = 4) -> np.ndarray:
    """One row per prototype (id 1 at the top), a colour swatch then its examples: an RGB uint8 image."""
    k = len(crops)
    colours = prototype_colours(k) if colours is None else colours
    cols = 1 + max((len(row) for row in crops), default=0)
    mosaic = np.full((k * (size + gap) + gap, cols * (size + gap) + gap, 3), 255, np.uint8)
    for r, row in enumerate(crops):
        top = gap + r * (size + gap)
        swatch = (np.asarray(colours[r][:3]) * 255).astype(np.uint8)
        mosaic[top + size // 4: top + 3 * size // 4, gap + size // 4: gap + 3 * size // 4] = swatch
        for c, crop in enumerate(row):
            tile = tinted(crop, colours[r])
            left = gap + (c + 1) * (size + gap)
            mosaic[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    return mosaic


def write_gallery(path: Path, crops: list[list[GalleryCrop]], shares: Sequence[float]) -> None:
    """gallery.png: one labelled row per prototype (matplotlib), or the plain mosaic without it; written atomically."""
    from ..atomic import atomic_write, atomic_write_bytes

    colours = prototype_colours(len(crops))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import imageio.v3 as iio

        atomic_write_bytes(path, iio.imwrite("<bytes>", gallery_mosaic(crops, colours), extension=".png"), "gallery")
        return
    cols = max(1, max(len(row) for row in crops))
    fig, axes = plt.subplots(len(crops), cols, figsize=(1.3 * cols + 1.2, 1.3 * len(crops)), squeeze=False, dpi=100)
    for r, row in enumerate(crops):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(tinted(row[c], colours[r]), interpolation="nearest")
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(f"{r + 1}\n{shares[r] * 100:.0f}%", rotation=0, ha="right", va="center",
                              color=colours[r] * 0.8, fontsize=11, fontweight="bold")
    fig.suptitle("prototypes (id, share of pixels); tinted: pixels of that prototype", fontsize=9)
    fig.tight_layout()
    try:
        with atomic_write(path, "gallery") as fh:
            fig.savefig(fh, format="png")
    finally:
        plt.close(fig)


__all__ = ["GalleryCrop", "gallery_crops", "gallery_mosaic", "prototype_colours", "tinted", "write_gallery"]
