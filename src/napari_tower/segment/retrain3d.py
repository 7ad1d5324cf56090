"""The 3D side of the correct-and-retrain loop (issue 17): a corrected Labels volume retrains a 3D model.

The unit is the volume: every volume holding a prediction or a correction is trained on whole, and
its slices that hold neither (never predicted, never painted) carry no loss, like unpainted slices
in 3D fine-tuning. The volumes are then predicted again whole (`predict_volumes`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data import Image
from .predict import Prediction, Predictor


def volume_planes(planes: Sequence[int], image: Image) -> list[int]:
    """Every plane of the volumes that hold any of `planes` (in order): what a 3D retrain trains and predicts."""
    z = max(1, image.z_size)
    volumes = sorted({int(p) // z for p in planes})
    return [v * z + k for v in volumes for k in range(z) if v * z + k < image.shape[0]]


def volume_subset(image: Image, planes: list[int]) -> Image:
    """The planes of whole volumes as an `Image` that still knows its volume depth."""
    return Image(np.asarray(image.data[planes]), image.source, image.axes, max(1, image.z_size))


def volume_retrain_targets(corrected: np.ndarray, z_size: int, target: str, annotated: np.ndarray) -> np.ndarray:
    """Corrected labels of whole volumes (planes, Y, X) as training labels for a 3D model with `target`.

    As `retrain.retrain_targets`, but a foreground mask is split into 3D connected components (one
    object keeps one id through z), and slices outside `annotated` become 0: unannotated for every
    target kind (3D fine-tuning reads a slice without labels as unpainted).
    """
    out = np.asarray(corrected).astype(np.int64)
    if target == "instance" and out.max() <= 1:
        from skimage.measure import label

        z = max(1, z_size)
        out = np.concatenate([label(out[s:s + z] > 0, connectivity=1) for s in range(0, len(out), z)])
    elif target == "sparse":
        out = out + 1
    out[~np.asarray(annotated, bool)] = 0
    return out


def _pad_to(x: torch.Tensor, multiples: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """`x` (N, C, Z, Y, X) padded at the end of each spatial axis to a multiple (reflect; edge where too thin)."""
    shape = tuple(x.shape[2:])
    pads: list[int] = []
    for size, m in zip(reversed(shape), reversed(tuple(multiples))):
        pads += [0, (-size) % m]
    mode = "reflect" if all(p < s for p, s in zip(pads[1::2], reversed(shape))) else "replicate"
    return torch.nn.functional.pad(x, pads, mode=mode), shape


def predict_volumes(predictor: Predictor, image: Image,
                    progress: Callable[[int, int], None] | None = None) -> Prediction:
    """Probabilities (planes, K, Y, X) and labels (planes, Y, X) of every volume of `image`, each predicted whole.

    A small in-memory path for the retrain loop; tiled and block-wise 3D prediction of large volumes
    is the Predictor's (issue 17, v3d-blocks). Labels come from `Predictor.labels_from`, which is
    n-dimensional: 3D instances by the seeded 3D watershed.
    """
    predictor.check_image(image)
    norm = predictor.normalisation_for(image)
    multiples = predictor.model.unet.multiples
    p, _, h, w = image.shape
    probs = np.empty((p, predictor.classes, h, w), np.float32)
    labels = np.empty((p, h, w), np.int32)
    z = max(1, image.z_size)
    n = image.n_volumes
    for k in range(n):
        volume = norm.apply(np.asarray(image.volume(k)), channel_axis=1)  # (Z, C, Y, X)
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, 1, 0)[None]))
        x, shape = _pad_to(x, multiples)
        out = predictor.forward(x)[0, :, : shape[0], : shape[1], : shape[2]].numpy()
        probs[k * z:(k + 1) * z] = np.moveaxis(out, 0, 1)
        labels[k * z:(k + 1) * z] = predictor.labels_from(out)
        if progress is not None:
            progress(k + 1, n)
    return Prediction(probs, labels)


__all__ = ["predict_volumes", "volume_planes", "volume_retrain_targets", "volume_subset"]
