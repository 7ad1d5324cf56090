"""Prediction with a fine-tuned segmenter: tiled, plane by plane, normalised as in training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import PredictConfig
from ..data import Image, Normalisation, compute_normalisation
from ..errors import TowerError
from ..model_bundle import ModelBundle
from ..train.engine import cpu_has_native_bf16, resolve_device
from .instance_heads import head_for
from .instances import instances_from_probabilities
from .model import Segmenter, inference_segmenter
from .retry import predict_tiled_within_memory


@dataclass
class Prediction:
    """Per-plane class probabilities (P, K, Y, X) and labels (P, Y, X)."""

    probabilities: Any
    labels: Any


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for `precision` on `device` ("auto": bfloat16 only where it is native and fast)."""
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


class Predictor:
    """A loaded segmenter ready to predict images of any size."""

    def __init__(self, ckpt: ModelBundle, cfg: PredictConfig | None = None) -> None:
        ckpt.require_segmenter("the model")
        self.ckpt = ckpt
        self.cfg = cfg or PredictConfig()
        self.cfg.validate()
        self.device = resolve_device(self.cfg.device)
        self.model: Segmenter = inference_segmenter(ckpt, self.device)
        self.dtype = resolve_precision(self.cfg.precision, self.device)
        self.target = str(ckpt.target)
        self.classes = int(ckpt.classes)
        self.in_channels = ckpt.in_channels
        self.stored_norm = ckpt.normalisation
        # A shape-aware instance head (None: class probabilities, instances by the boundary watershed).
        self.head = head_for(ckpt.instance_head) if self.target == "instance" else None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                logits = self.model(x)
            if self.head is not None:
                return self.head.activate(logits.float()).contiguous().cpu()
            return logits.float().softmax(1).contiguous().cpu()

    def normalisation_for(self, image: Image) -> Normalisation:
        """The intensity mapping for `image`: the model's stored one, unless the image's range is far from it.

        Per-image percentiles move with content (a sparse frame's background is stretched up), so the
        training images' mapping is the default; but an image of another bit depth or exposure (its own
        percentile range over 4x wider or narrower than the training's) would be mis-scaled by it, and a
        model without stored statistics has none to give: those images use their own percentiles.
        """
        low, high = self.ckpt.percentiles
        own = compute_normalisation(image.data, image.source, low, high)
        stored = self.stored_norm
        if self.cfg.normalise != "model" or stored is None or len(stored.low) != len(own.low):
            return own
        for lo_m, hi_m, lo_i, hi_i in zip(stored.low, stored.high, own.low, own.high):
            ratio = (hi_i - lo_i) / max(hi_m - lo_m, 1e-12)
            if not 0.25 <= ratio <= 4.0 or lo_i > hi_m or hi_i < lo_m:
                return own
        return stored

    def check_image(self, image: Image) -> None:
        if image.channels != self.in_channels:
            hint = ("it looks like RGB while the model was trained on single-channel images; convert it to grayscale"
                    if image.channels in (3, 4) and self.in_channels == 1 else
                    f"give an image with {self.in_channels} channel(s)")
            raise TowerError(f"{image.source} has {image.channels} channel(s) "
                             f"but the model expects {self.in_channels}: {hint}")

    def probabilities(self, plane: Any, norm: Normalisation, out: Any = None) -> np.ndarray:
        """Class probabilities (K, Y, X) of one (C, Y, X) plane, tiled."""

        class _Normalised:
            """Normalises tiles as they are read, so a lazy plane is never loaded whole."""

            shape = plane.shape
            ndim = 3

            def __getitem__(self, key):  # noqa: ANN001
                return norm.apply(np.asarray(plane[key]), channel_axis=0)

        cfg = self.cfg
        # Out of memory: retried with fewer, then smaller tiles; what fits is kept in cfg for the next plane.
        return predict_tiled_within_memory(_Normalised(), self._forward, self.classes, cfg, out=out)

    def labels_from(self, probs: np.ndarray) -> np.ndarray:
        """Labels of one plane: instance ids, or class ids (0 = background)."""
        if self.head is not None:
            if self.cfg.instances:
                return self.head.decode(probs, self.postprocess())
            return (probs[1] > 0.5).astype(np.int32)
        if self.target == "instance":
            # Foreground where interior or boundary wins the argmax, as fine-tuning validates it, not where
            # interior + boundary > 0.5: the soft-Dice term inflates the thin boundary class, so that sum
            # spread foreground past object edges (issue 21: +17% share on the training image itself).
            # argmax > 0 implies 1 - p0 > 0.5, so the masked map keeps the watershed's 0.5 threshold.
            fg = np.where(probs.argmax(0) > 0, 1.0 - probs[0], 0.0).astype(np.float32)
            if self.cfg.instances:
                return instances_from_probabilities(fg, probs[2], min_size=self.cfg.min_size)
            return (fg > 0.5).astype(np.int32)
        labels = probs.argmax(0).astype(np.int32)
        if self.cfg.instances:
            return instances_from_probabilities((labels > 0).astype(np.float32), None, min_size=self.cfg.min_size)
        return labels

    def postprocess(self) -> dict:
        """The shape head's post-processing as tuned on the labelled images; a minimum size set in the
        config (anything but its default) overrides the tuned one."""
        params = dict(self.ckpt.postprocess or {})
        if self.cfg.min_size != PredictConfig().min_size or "min_size" not in params:
            params["min_size"] = int(self.cfg.min_size)
        return params

    def predict(self, image: Image, planes: list[int] | None = None,
                progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> Prediction:
        """Predict every plane (or the listed ones) of `image` into in-memory arrays."""
        self.check_image(image)
        norm = self.normalisation_for(image)
        p, _, h, w = image.shape
        planes = list(range(p)) if planes is None else planes
        # Every pixel is written by the tiling, so no zero-fill; planes are predicted in place (no copy).
        probs = np.empty((len(planes), self.classes, h, w), np.float32)
        labels = np.empty((len(planes), h, w), np.int32)
        for k, pi in enumerate(planes):
            if should_stop is not None and should_stop():
                raise TowerError("prediction stopped")
            self.probabilities(image.data[pi], norm, out=probs[k])
            labels[k] = self.labels_from(probs[k])
            if progress is not None:
                progress(k + 1, len(planes))
        return Prediction(probs, labels)
