"""Prediction with a fine-tuned segmenter: tiled, plane by plane (or volume by volume for a 3D model),
normalised as in training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import PredictConfig
from ..data import Image, Normalisation, compute_normalisation, median_level, nearest_normalisation, stored_or_own
from ..data.lazy import read_region
from ..errors import TowerError
from ..model_bundle import ModelBundle
from ..train.engine import cpu_has_native_bf16, resolve_device
from .instance_heads import head_for
from .instances import instances_from_probabilities
from .model import Segmenter, inference_segmenter
from .retry import predict_tiled_within_memory
from .test_time import averaged
from .tiling3d import predict_tiled_3d, tiling_3d

# How far (in the model's [0, 1] input range) an image's median may sit outside the labelled images' before
# prediction warns. Intensity jitter trains for shifts of about 0.1-0.2. Measured over the shared sets' test
# images (benchmarks/unfamiliar_levels.py): bright-field images with dark nuclei sit 0.81-0.99 outside a
# fluorescence model's range, every other image at most 0.47; 0.6 is between the two.
UNFAMILIAR_GAP = 0.6


def level_gap(level: float, low: float, high: float) -> float:
    """How far a median level lies outside the labelled images' range [low, high] (0 inside it)."""
    return max(level - high, low - level, 0.0)


@dataclass
class Prediction:
    """Per-plane class probabilities (P, K, Y, X) and labels (P, Y, X), and what the user should know about them."""

    probabilities: Any
    labels: Any
    warnings: list[str] = field(default_factory=list)


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


def volume_size(image: Image) -> int:
    """Slices per volume for a 3D model: `Image.z_size`, or all planes when they do not split into whole volumes."""
    p, z = int(image.shape[0]), max(1, int(image.z_size))
    return z if p % z == 0 else p


class PlaneRange:
    """Planes [start, start + count) of a (P, C, Y, X) array-like, read only where indexed (a lazy `Image.volume`)."""

    def __init__(self, data: Any, start: int, count: int) -> None:
        self.data, self.start = data, int(start)
        self.shape = (int(count), *tuple(data.shape)[1:])
        self.ndim = 4

    def __getitem__(self, key: tuple) -> np.ndarray:
        zs, *rest = key if isinstance(key, tuple) else (key,)
        lo, hi, _ = zs.indices(self.shape[0])
        return read_region(self.data, (slice(self.start + lo, self.start + hi), *rest))


class Predictor:
    """A loaded segmenter ready to predict images of any size."""

    def __init__(self, ckpt: ModelBundle, cfg: PredictConfig | None = None) -> None:
        ckpt.require_segmenter("the model")
        self.ckpt = ckpt
        self.cfg = cfg or PredictConfig()
        self.cfg.validate()
        self.spatial_dims = int(ckpt.spatial_dims)  # 3: volumes go to the network whole, tiled in 3D
        self.target = str(ckpt.target)
        # A shape-aware instance head (None: class probabilities, instances by the boundary watershed).
        self.head = head_for(ckpt.instance_head) if self.target == "instance" else None
        if self.spatial_dims == 3 and self.head is not None and not self.head.volumes:
            raise TowerError(f"{ckpt.instance_head} instance heads predict planes only: use a 2D model for them")
        self.device = resolve_device(self.cfg.device)
        self.model: Segmenter = inference_segmenter(ckpt, self.device)
        self.dtype = resolve_precision(self.cfg.precision, self.device)
        self.classes = int(ckpt.classes)
        self.in_channels = ckpt.in_channels
        self.stored_norm = ckpt.normalisation
        # Test-time flips only where every output map is independent of direction (not StarDist's rays).
        self.transforms = int(self.cfg.tta) if self.head is None or self.head.symmetric else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, K, ...) of normalised input (N, C, ...) on the CPU: class softmax, or a shape head's
        activated maps (background and foreground probabilities first)."""
        with torch.inference_mode():
            return averaged(self._activated, x.to(self.device, non_blocking=True), self.transforms)

    def _activated(self, x: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
        x = x.contiguous(memory_format=layout)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            logits = self.model(x)
        if self.head is not None:
            return self.head.activate(logits.float()).contiguous().cpu()
        return logits.float().softmax(1).contiguous().cpu()

    def normalisation_for(self, image: Image) -> Normalisation:
        """The intensity mapping for `image`: a labelled image's, as fine-tuning scaled it, unless the image's range
        is far from it.

        Per-image percentiles move with content (a sparse frame's background is stretched up), so a training
        image's mapping is the default: of several labelled images, the one whose scaling fits this image's own
        range best (`data.nearest_normalisation`; models before it store one median mapping). An image of another
        bit depth or exposure (its own percentile range over 4x wider or narrower than that mapping's) would be
        mis-scaled by it, and a model without stored statistics has none to give: those use their own percentiles.
        """
        low, high = self.ckpt.percentiles
        own = compute_normalisation(image.data, image.source, low, high)
        if self.cfg.normalise != "model":
            return own
        # A model of several labelled images saw each under its own percentiles: the one that fits this image.
        return stored_or_own(nearest_normalisation(self.ckpt.normalisations, own) or self.stored_norm, own)

    def unfamiliar(self, image: Image, norm: Normalisation) -> str | None:
        """A warning when `image`, scaled by `norm`, looks unlike every labelled image the model learnt from:
        its median intensity (where its background sits) lies over `UNFAMILIAR_GAP` outside theirs. That is
        inverted contrast or another modality (bright-field with dark nuclei against fluorescence), where a
        model floods or finds nothing; None when it looks familiar or the model stores no levels."""
        if not self.ckpt.levels:
            return None
        low, high = self.ckpt.levels
        level = median_level(image.data, norm)
        if level_gap(level, low, high) <= UNFAMILIAR_GAP:
            return None
        side = "brighter" if level > high else "darker"
        return (f"{image.source} looks unlike the images the model learnt from: its background is much {side} "
                f"(median {level:.2f} of the model's input range, the labelled images' {low:.2f}-{high:.2f}), as "
                "with inverted contrast or another modality. Check the result; if it is wrong, label or correct "
                "part of this image and fine-tune or retrain with it.")

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
        return predict_tiled_within_memory(_Normalised(), self.forward, self.classes, cfg, out=out)

    def volume_probabilities(self, volume: Any, norm: Normalisation, out: Any = None) -> np.ndarray:
        """Class probabilities (Z, K, Y, X) of one (Z, C, Y, X) volume, tiled in 3D (3D models only)."""

        class _Normalised:
            """Normalises tiles as they are read, so a lazy volume is never loaded whole."""

            shape = tuple(volume.shape)
            ndim = 4

            def __getitem__(self, key):  # noqa: ANN001
                return norm.apply(np.asarray(volume[key]), channel_axis=1)

        multiples = self.model.unet.multiples
        tile, overlap = tiling_3d(self.cfg.tile, self.cfg.overlap, multiples)
        return predict_tiled_3d(_Normalised(), self.forward, self.classes, tile, overlap, multiples,
                                batch=self.cfg.batch, out=out)

    def labels_from(self, probs: np.ndarray) -> np.ndarray:
        """Labels of one plane (probabilities (K, Y, X)) or one volume ((K, Z, Y, X), 3D instances):
        instance ids, or class ids (0 = background)."""
        if self.head is not None:
            if self.cfg.instances:
                return self.head.decode(probs, self.postprocess())
            return (probs[1] > 0.5).astype(np.int32)
        if self.target == "instance":
            # Foreground where interior or boundary wins the argmax, as fine-tuning validates it, not where
            # interior + boundary > 0.5: the soft-Dice term inflates the thin boundary class, so that sum
            # spread foreground past object edges (issue 21: +17% share on the training image itself).
            # argmax > 0 implies 1 - p0 > 0.5, so the masked map keeps the watershed's 0.5 threshold.
            # (Written with float32 and bool temporaries only: argmax and np.where made 25 bytes per pixel of
            # int64/float64 temporaries, the peak of a 3D block.) p0 >= max(others) is exactly argmax == 0.
            fg = 1.0 - probs[0]
            fg[probs[0] >= probs[1:].max(0)] = 0.0
            if self.cfg.instances:
                return instances_from_probabilities(fg, probs[2], min_size=self.cfg.min_size)
            return (fg > 0.5).astype(np.int32)
        labels = probs.argmax(0).astype(np.int32)
        if self.cfg.instances:
            return instances_from_probabilities((labels > 0).astype(np.float32), None, min_size=self.cfg.min_size)
        return labels

    def postprocess(self) -> dict:
        """The shape head's post-processing as tuned on the labelled images; a minimum size set in the
        config (anything but its default) and a seed threshold above 0 override the tuned ones."""
        params = dict(self.ckpt.postprocess or {})
        if self.cfg.min_size != PredictConfig().min_size or "min_size" not in params:
            params["min_size"] = int(self.cfg.min_size)
        if self.cfg.seed_threshold > 0:
            params["seed_threshold"] = float(self.cfg.seed_threshold)
        return params

    def predict(self, image: Image, planes: list[int] | None = None,
                progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> Prediction:
        """Predict every plane (or the listed ones) of `image` into in-memory arrays.

        A 3D model predicts whole volumes (`Image.volume`): those holding the listed planes.
        """
        self.check_image(image)
        norm = self.normalisation_for(image)
        warning = self.unfamiliar(image, norm)
        if self.spatial_dims == 3:
            result = self._predict_volumes(image, norm, planes, progress, should_stop)
            result.warnings += [warning] if warning else []
            return result
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
        return Prediction(probs, labels, [warning] if warning else [])

    def _predict_volumes(self, image: Image, norm: Normalisation, planes: list[int] | None,
                         progress: Callable[[int, int], None] | None,
                         should_stop: Callable[[], bool] | None) -> Prediction:
        """3D model: each volume predicted as one 3D array; labels are 3D (instances keep their id across z)."""
        p, _, h, w = image.shape
        z = volume_size(image)
        planes = list(range(p)) if planes is None else [int(i) for i in planes]
        volumes = sorted({i // z for i in planes})
        probs = np.empty((len(planes), self.classes, h, w), np.float32)
        labels = np.empty((len(planes), h, w), np.int32)
        for k, v in enumerate(volumes):
            if should_stop is not None and should_stop():
                raise TowerError("prediction stopped")
            whole = list(range(v * z, (v + 1) * z))
            at = planes.index(whole[0]) if whole[0] in planes else -1
            if at >= 0 and planes[at:at + z] == whole:  # the whole volume is wanted: predicted in place, no copy
                vol_probs = self.volume_probabilities(PlaneRange(image.data, v * z, z), norm, out=probs[at:at + z])
                labels[at:at + z] = self.labels_from(np.moveaxis(vol_probs, 1, 0))  # (K, Z, Y, X) view
            else:
                vol_probs = self.volume_probabilities(PlaneRange(image.data, v * z, z), norm)
                vol_labels = self.labels_from(np.moveaxis(vol_probs, 1, 0))
                for i, pi in enumerate(planes):
                    if pi // z == v:
                        probs[i], labels[i] = vol_probs[pi - v * z], vol_labels[pi - v * z]
                del vol_probs, vol_labels
            if progress is not None:
                progress(k + 1, len(volumes))
        return Prediction(probs, labels)
