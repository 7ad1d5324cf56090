"""Per-channel percentile normalisation, kept with the model (spec section 1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import TowerError
from .lazy import is_lazy, read_region

# Percentiles of a huge image are estimated from at most this many pixels per channel.
_MAX_SAMPLES = 4_000_000


@dataclass
class Normalisation:
    """Low and high percentile per channel; maps them to 0 and 1."""

    low: list[float]
    high: list[float]

    def apply(self, x: np.ndarray, channel_axis: int = -3) -> np.ndarray:
        """Scale `x` (…, C, Y, X) into [0, 1] as float32."""
        shape = [1] * x.ndim
        shape[channel_axis] = len(self.low)
        lo = np.asarray(self.low, np.float32).reshape(shape)
        hi = np.asarray(self.high, np.float32).reshape(shape)
        out = (np.asarray(x, np.float32) - lo) / (hi - lo)
        return np.clip(out, 0.0, 1.0, out=out)

    def to_dict(self) -> dict[str, list[float]]:
        return {"low": list(map(float, self.low)), "high": list(map(float, self.high))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalisation:
        return cls([float(v) for v in d["low"]], [float(v) for v in d["high"]])


# A strided sample of a lazy (on-disk) image reads every chunk of the planes it touches; above this many
# pixels to touch, percentiles come from random windows instead, so the cost no longer grows with the image.
_MAX_STRIDED_READ = 2**26
_WINDOW = 256


def _subsample(data: Any) -> np.ndarray:
    """A sample of a (P, C, Y, X) array-like small enough to take percentiles of."""
    p, c, h, w = data.shape
    per_plane = max(1, _MAX_SAMPLES // max(1, p))
    step = max(1, int(np.sqrt(h * w / per_plane)))
    plane_step = max(1, p // 64)
    if is_lazy(data) and len(range(0, p, plane_step)) * h * w > _MAX_STRIDED_READ:
        return _windows(data)
    return read_region(data, (slice(None, None, plane_step), slice(None),
                              slice(None, None, step), slice(None, None, step)))


def _windows(data: Any) -> np.ndarray:
    """Whole-resolution windows at seeded random places, about _MAX_SAMPLES pixels per channel in all."""
    p, c, h, w = data.shape
    wy, wx = min(_WINDOW, h), min(_WINDOW, w)
    n = max(1, _MAX_SAMPLES // (wy * wx))
    rng = np.random.default_rng(0)
    planes = rng.integers(p, size=n)
    ys, xs = rng.integers(h - wy + 1, size=n), rng.integers(w - wx + 1, size=n)
    return np.stack([read_region(data, (int(k), slice(None), slice(y, y + wy), slice(x, x + wx)))
                     for k, y, x in zip(planes, ys, xs)])


def compute_normalisation(data: Any, source: str, low: float = 1.0, high: float = 99.8) -> Normalisation:
    """Percentiles per channel of a (P, C, Y, X) array; refuses NaN/Inf and constant images."""
    sample = _subsample(data).astype(np.float32, copy=False)
    if not np.isfinite(sample).all():
        raise TowerError(f"{source} contains NaN or infinite values: replace them (e.g. with 0) before training")
    per_channel = sample.transpose(1, 0, 2, 3).reshape(sample.shape[1], -1)
    lo = np.percentile(per_channel, low, axis=1)
    hi = np.percentile(per_channel, high, axis=1)
    flat = hi <= lo
    if flat.any():
        # Fall back to min/max before declaring the channel constant (sparse images).
        lo = np.where(flat, per_channel.min(axis=1), lo)
        hi = np.where(flat, per_channel.max(axis=1), hi)
    if (hi <= lo).any():
        bad = int(np.argmax(hi <= lo))
        raise TowerError(f"{source} is constant (channel {bad} has a single value): it holds nothing to learn from")
    return Normalisation(lo.tolist(), hi.tolist())


def stored_or_own(stored: Normalisation | None, own: Normalisation, span: float = 4.0) -> Normalisation:
    """The mapping a model applies to an image: its stored one, or the image's own percentiles `own` where the
    model stores none or the image's range is over `span` times wider or narrower than the stored one (another
    bit depth or exposure, which the stored mapping would mis-scale) or lies outside it.

    Per-image percentiles move with content (a sparse frame's background is stretched up), so the stored mapping
    is the default wherever it fits; prediction and continued training (a retrain) use this same rule.
    """
    if stored is None or len(stored.low) != len(own.low):
        return own
    for lo_m, hi_m, lo_i, hi_i in zip(stored.low, stored.high, own.low, own.high):
        ratio = (hi_i - lo_i) / max(hi_m - lo_m, 1e-12)
        if not 1 / span <= ratio <= span or lo_i > hi_m or hi_i < lo_m:
            return own
    return stored


def nearest_normalisation(stored: Sequence[Normalisation] | None, own: Normalisation) -> Normalisation | None:
    """Of the labelled images' scalings `stored`, the one that maps the image's own percentile range `own` nearest
    to [0, 1] (summed over channels: how far its own low lands from 0 and its own high from 1); None if none.

    A model fine-tuned on several images saw each under its own percentiles. One mapping for all (their median)
    squeezed a bright-field image of a mostly fluorescent set to nuclei 0.86 and background 1.0, where training
    had shown it nuclei 0.01 and background 0.9, and the model flooded it (docs/benchmarks.md, issue 20). The
    nearest labelled image's scaling keeps what issue 21 needs: with one labelled image every image gets its
    scaling, not its own content-dependent percentiles.
    """
    candidates = [n for n in stored or [] if len(n.low) == len(own.low)]
    if not candidates:
        return None

    def misfit(n: Normalisation) -> float:
        total = 0.0
        for lo_m, hi_m, lo_i, hi_i in zip(n.low, n.high, own.low, own.high):
            span = max(hi_m - lo_m, 1e-12)
            total += abs((lo_i - lo_m) / span) + abs((hi_i - lo_m) / span - 1.0)
        return total

    return min(candidates, key=misfit)


def median_level(data: Any, norm: Normalisation) -> float:
    """The median intensity of a (P, C, Y, X) image after `norm`, over the percentile sample and all channels.

    Most pixels of a microscopy image are background, so this is where its background sits in the model's input
    range: near 0 for fluorescence, near 1 for bright-field with dark objects, in between for phase contrast.
    """
    return float(np.median(norm.apply(_subsample(data), channel_axis=1)))
