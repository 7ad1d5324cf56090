"""Dense pixel embeddings from a pretrained encoder.

A pixel is described by the encoder's features at every chosen level, each
level L2-normalised over its channels (so no level dominates by scale) and
bilinearly upsampled to full resolution, plus optionally the normalised
intensity. Comparing a pixel with K prototypes never needs the full-resolution
feature stack: bilinear upsampling is linear, so the dot product with a
prototype is computed at each level's own resolution (K channels) and only
those K maps are upsampled. Memory stays O(K x pixels) per tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import PrototypeConfig
from ..data import Image, Normalisation, compute_normalisation
from ..errors import TowerError
from ..model_bundle import ModelBundle
from ..models import UNet
from ..train.engine import resolve_device
from ..train.pretrain import load_unet_weights

# The finest four levels (full to 1/8 resolution). Level 3 adds the context that tells a flat bright background
# (brightfield) from a bright nucleus; the coarsest level blurs object edges. DSB2018 nuclei, K = 16 named from one
# labelled image, pseudo-label Dice on the 445 other training images (400-step TOWER, base 16, depth 4):
# levels 0-2 0.769 (bright brightfield backgrounds named nuclei: 95% of their pixels), levels 0-3 0.830 (27%).
# An earlier check with K = 8 on 60 images: all five levels 0.79, levels 0-2 0.82, levels 2-4 0.40.
DEFAULT_LEVELS = (0, 1, 2, 3)


class _Holder(nn.Module):
    """Gives `load_unet_weights` the `unet` attribute it loads into."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet


class PixelEmbedder:
    """The encoder of a pretraining (or segmenter) checkpoint, turned into per-pixel descriptors."""

    def __init__(self, ckpt: ModelBundle, cfg: PrototypeConfig, source: str = "the checkpoint") -> None:
        # Either kind will do (`ModelBundle` holds no other): both have the U-Net encoder.
        self.in_channels = ckpt.in_channels
        self.depth = ckpt.depth
        self.base = ckpt.base
        levels = tuple(cfg.levels) or DEFAULT_LEVELS[: self.depth + 1]
        bad = [lv for lv in levels if not 0 <= lv <= self.depth]
        if bad:
            raise TowerError(f"encoder level(s) {bad} do not exist: this model has levels 0..{self.depth}")
        self.levels = tuple(sorted(set(levels)))
        self.widths = [self.base * 2**lv for lv in self.levels]
        self.intensity_weight = float(cfg.intensity_weight)
        self.device = resolve_device(cfg.device)
        unet = UNet(self.in_channels, self.base, self.depth)
        load_unet_weights(_Holder(unet), ckpt, ("encoder",), source)
        self.encoder = unet.encoder.to(self.device).eval()
        self.low_percentile, self.high_percentile = ckpt.percentiles
        # Each block (a level, the intensity) gets norm 1/sqrt(blocks): whole descriptors have norm ~1.
        self.level_scale = 1.0 / np.sqrt(len(self.levels))

    @property
    def dims(self) -> int:
        """Length of a pixel descriptor."""
        return sum(self.widths) + (self.in_channels if self.intensity_weight > 0 else 0)

    def check_image(self, image: Image) -> None:
        if image.channels != self.in_channels:
            raise TowerError(
                f"{image.source} has {image.channels} channel(s) but the model was pretrained on "
                f"{self.in_channels}: use images like the ones it was pretrained on")

    def normalisation(self, image: Image) -> Normalisation:
        return compute_normalisation(image.data, image.source, self.low_percentile, self.high_percentile)

    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Chosen encoder levels of a (B, C, H, W) batch, each unit-norm over channels, times the level scale."""
        feats = self.encoder(x)
        return [F.normalize(feats[lv].float(), dim=1) * self.level_scale for lv in self.levels]

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        return x, h, w

    @torch.no_grad()
    def describe(self, x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """Descriptors (N, dims) of the pixels (ys, xs) of one normalised (C, H, W) plane or crop."""
        x, h, w = self._pad(x[None].to(self.device))
        parts = []
        for f in self._levels(x):
            up = F.interpolate(f, size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
            parts.append(up[:, ys, xs].T)
        if self.intensity_weight > 0:
            parts.append(x[0, :, ys, xs].T.float() * self.intensity_weight)
        return torch.cat(parts, 1).cpu()

    def split(self, centroids: torch.Tensor) -> list[torch.Tensor]:
        """Centroids (K, dims) cut into the blocks of the descriptor: one per level, then the intensity."""
        sizes = list(self.widths) + ([self.in_channels] if self.intensity_weight > 0 else [])
        return list(torch.split(centroids, sizes, dim=1))

    @torch.no_grad()
    def scores(self, x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) squared distances to each prototype, less the pixel's own squared norm (same per pixel).

        `x` is a normalised (B, C, H, W) batch (padded inside to a multiple of 2**depth).
        """
        x, h, w = self._pad(x.to(self.device))
        blocks = [b.to(self.device) for b in self.split(centroids)]
        dot = torch.zeros((x.shape[0], centroids.shape[0], *x.shape[-2:]), device=self.device)
        for f, c in zip(self._levels(x), blocks):
            low = torch.einsum("bchw,kc->bkhw", f, c)
            dot += F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.intensity_weight > 0:
            dot += torch.einsum("bchw,kc->bkhw", x.float() * self.intensity_weight, blocks[-1])
        norms = (centroids.to(self.device) ** 2).sum(1)
        return (norms[None, :, None, None] - 2 * dot)[:, :, :h, :w].cpu()


def sample_descriptors(embedder: PixelEmbedder, images: Sequence[Image], norms: Sequence[Normalisation],
                       samples: int, seed: int, crop: int = 256, per_crop: int = 4096,
                       progress: Any = None, should_stop: Any = None) -> torch.Tensor:
    """A seeded sample of about `samples` pixel descriptors, spread evenly over every plane of `images`.

    Each plane contributes random crops (at most `crop` pixels a side, only as many as its quota
    needs) so a large image is never embedded whole just to draw a few thousand pixels.
    """
    planes = [(i, p) for i, im in enumerate(images) for p in range(im.shape[0])]
    quota = int(np.ceil(samples / len(planes)))
    rng = np.random.default_rng(seed)
    out: list[torch.Tensor] = []
    for n, (i, p) in enumerate(planes):
        if should_stop is not None and should_stop():
            raise TowerError("finding prototypes stopped")
        _, _, h, w = images[i].shape
        ch, cw = min(crop, h), min(crop, w)
        n_crops = max(1, min(int(np.ceil(h * w / (ch * cw))), int(np.ceil(quota / per_crop))))
        for c in range(n_crops):
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            data = norms[i].apply(np.asarray(images[i].data[p, :, y0:y0 + ch, x0:x0 + cw]), channel_axis=0)
            take = quota // n_crops + (1 if c < quota % n_crops else 0)
            flat = rng.choice(ch * cw, size=min(take, ch * cw), replace=False)
            ys, xs = torch.from_numpy(flat // cw), torch.from_numpy(flat % cw)
            out.append(embedder.describe(torch.from_numpy(data), ys, xs))
        if progress is not None:
            progress(n + 1, len(planes))
    return torch.cat(out)


__all__ = ["PixelEmbedder", "sample_descriptors"]
