"""Training a shape-aware instance head: whole-plane targets, patch sampling, post-processing tuning.

`ShapeObjective` replaces the class-map sampler and loss of `finetune` for a shape head: targets are
computed once per labelled plane from its instance ids (a patch would cut objects and shorten their
distances), and patches of image, targets and per-pixel weights are drawn together and augmented with the
head's own rules (rays turn with the image). Unannotated pixels (sparse painting: 0 where the labels are
sparse, or weight 0) have weight 0 and give no gradient.

`tune_postprocess` then chooses the seed threshold, NMS threshold and minimum object size that maximise
F1 at IoU 0.5 on the labelled planes, never on test images, and the result is stored in the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..data import Image, Normalisation
from ..data.annotated import AnnotatedPixels
from ..data.lazy import read_region
from ..data.patch_augment import augment_patch
from .instances import remove_small
from .metrics import overlaps
from .shape_heads import DEFAULT_POSTPROCESS, InstanceHead
from .targets import painted_runs

MIN_SIZES = (0, 8, 16, 32, 64)
TUNE_MAX_PIXELS = 4_000_000  # labelled pixels predicted for tuning; beyond it, evenly spaced planes only


def instance_ids(labels: np.ndarray, sparse: bool) -> tuple[np.ndarray, np.ndarray]:
    """(object ids with 0 = background, annotated mask) of one labelled plane.

    Dense instance labels: 0 is background, every pixel annotated. Sparse instance labels (napari
    scribbles): 0 is unannotated, 1 background, 2.. one id per object.
    """
    lab = np.asarray(labels).astype(np.int64)
    if not sparse:
        return np.where(lab > 0, lab, 0), np.ones(lab.shape, bool)
    return np.where(lab >= 2, lab - 1, 0), lab > 0


class ShapeObjective:
    """Patches of (image, head targets, weights) from labelled planes, and the head's loss on them."""

    def __init__(self, head: InstanceHead, planes: Sequence[tuple[Image, Normalisation, np.ndarray, np.ndarray]],
                 patch: int, augment: bool = True, intensity: float = 0.0) -> None:
        """`planes`: (single-plane image, its normalisation, instance ids, per-pixel weights) each;
        `intensity`: the random contrast and brightness change of each patch (`jitter_intensity`), as the
        class heads get it, so a model does not key on the labelled image's absolute background level."""
        self.head = head
        self.patch = patch
        self.augment = augment
        self.intensity = intensity
        self.images = [(im, norm) for im, norm, _, _ in planes]
        self.targets = [head.encode(ids) for _, _, ids, _ in planes]
        self.weights = [np.asarray(w, np.float32) for _, _, _, w in planes]
        # Draw planes by area, and patches near annotated pixels, so sparse scribbles are not mostly missed.
        self.area = np.array([float(w.size) for w in self.weights])
        self.annotated = [AnnotatedPixels.of(None, w) for w in self.weights]

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        p = self.patch
        channels = self.images[0][0].channels
        images = np.empty((n, channels, p, p), np.float32)
        targets = np.empty((n, self.targets[0].shape[0], p, p), np.float32)
        weights = np.empty((n, p, p), np.float32)
        probs = self.area / self.area.sum()
        for i in range(n):
            k = int(rng.choice(len(self.images), p=probs))
            (im, norm), t, w = self.images[k], self.targets[k], self.weights[k]
            y, x = self.annotated[k].corner(p, rng)
            img = norm.apply(read_region(im.data, (0, slice(None), slice(y, y + p), slice(x, x + p))))
            tt, ww = t[:, y: y + p, x: x + p], w[y: y + p, x: x + p]
            if self.augment:
                img, (ww,), turn = augment_patch(img, [ww], rng, self.intensity)
                tt = self.head.augment(tt, turn.k, turn.flip)
            images[i], targets[i], weights[i] = img, tt, ww
        return {"image": images, "targets": targets, "weights": weights}

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head.loss(logits, batch["targets"], batch["weights"])

    @staticmethod
    def foreground_classes(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Validation targets in the class convention (0 unannotated, 1 background, 2 foreground)."""
        fg = batch["targets"][:, 0].long() + 1
        return torch.where(batch["weights"] > 0, fg, torch.zeros_like(fg))


def _matches(pred: np.ndarray, truth: np.ndarray, annotated: np.ndarray | None) -> tuple[int, int, int]:
    """(TP, FP, FN) at IoU 0.5; with sparse annotation, predicted objects mostly outside it are not counted."""
    from .metrics import _count_matches

    if annotated is not None and not annotated.all() and pred.max() > 0:
        inside = np.bincount(pred.ravel(), weights=annotated.ravel().astype(float), minlength=pred.max() + 1)
        sizes = np.bincount(pred.ravel(), minlength=pred.max() + 1)
        outside = inside < 0.5 * sizes
        outside[0] = False
        pred = np.where(outside[pred], 0, pred)
    ov = overlaps(pred, truth)
    tp = _count_matches(ov, 0.5)
    return tp, ov.n_pred - tp, ov.n_true - tp


def decoded_grid(head: InstanceHead, outputs: Sequence[np.ndarray]
                 ) -> Iterator[tuple[dict[str, Any], list[np.ndarray]]]:
    """(parameters, instance labels of each of `outputs`) at every point of the head's grid and every minimum
    size; each grid point is decoded once, then size-filtered (the size filter is the decoding's last step)."""
    for candidate in head.grid():
        decoded = [head.decode(out, {**DEFAULT_POSTPROCESS, **candidate, "min_size": 0}) for out in outputs]
        for min_size in MIN_SIZES:
            yield ({**DEFAULT_POSTPROCESS, **candidate, "min_size": min_size},
                   [remove_small(labels.copy(), min_size) for labels in decoded])


def _compared(labels: np.ndarray, truth: np.ndarray, annotated: np.ndarray | None,
              painted: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """What is matched: a plane whole, or a volume decoded in 3D on each run of neighbouring `painted` slices
    (objects matched in 3D there, so one cut in two along z counts as a miss; a lone slice is matched in-plane)."""
    if painted is None:
        yield labels, truth, annotated
        return
    for start, stop in painted_runs(painted):
        yield labels[start:stop], truth[start:stop], None


def score_postprocess_grid(head: InstanceHead, outputs: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                           annotated: Sequence[np.ndarray | None] | None = None,
                           painted: Sequence[np.ndarray] | None = None) -> list[tuple[dict[str, Any], float]]:
    """Pooled F1 at IoU 0.5 of `outputs` (activated head outputs of labelled planes) against their instance
    labels `truths` at every point of `decoded_grid`, as (parameters, F1) pairs. For volumes (outputs
    (K, Z, Y, X), truths (Z, Y, X)) `painted` gives each volume's painted slices (Z,): objects are decoded in
    3D and matched on those slices (`_compared`)."""
    annotated = annotated if annotated is not None else [None] * len(outputs)
    slices = painted if painted is not None else [None] * len(outputs)
    scores: list[tuple[dict[str, Any], float]] = []
    for params, decoded in decoded_grid(head, outputs):
        tp = fp = fn = 0
        for labels, truth, ann, done in zip(decoded, truths, annotated, slices):
            for pred, true, mask in _compared(labels, truth, ann, done):
                counts = _matches(pred, true, mask)
                tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
        scores.append((params, 2 * tp / max(2 * tp + fp + fn, 1)))
    return scores


def choose_postprocess(scores: Sequence[tuple[dict[str, Any], float]], ties: str = "middle") -> dict[str, Any]:
    """The parameters of the best F1 in `scores` (from `score_postprocess_grid`), with "f1" for the record.

    On one or two labelled images several grid points often tie. `ties="middle"` then takes, parameter by
    parameter, the tied value nearest the middle of the tied range (nearest the default when two are), which
    leaves a margin on both sides for images unlike the labelled ones; `"first"` takes the earliest grid point
    (the rule before session 13, which chose the lowest seed threshold, 0.2, where touching nuclei share a seed).
    """
    best = max(f1 for _, f1 in scores)
    tied = [params for params, f1 in scores if f1 >= best - 1e-9]
    if ties == "middle":
        for key in ("seed_threshold", "nms_threshold", "min_size"):
            values = sorted({float(p[key]) for p in tied})
            mid = (values[0] + values[-1]) / 2
            pick = min(values, key=lambda v: (round(abs(v - mid), 9), abs(v - float(DEFAULT_POSTPROCESS[key]))))
            tied = [p for p in tied if float(p[key]) == pick]
    elif ties != "first":
        raise ValueError(f"ties must be 'middle' or 'first', not {ties!r}")
    return {**tied[0], "f1": round(best, 4)}


def tune_postprocess(head: InstanceHead, outputs: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                     annotated: Sequence[np.ndarray | None] | None = None,
                     painted: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """The post-processing parameters with the best pooled F1 at IoU 0.5 of `outputs` (activated head outputs
    of labelled planes, or volumes with their `painted` slices) against their instance labels `truths`, ties
    broken towards the middle of the tied range (`choose_postprocess`). Returns the parameters with "f1" (the
    training F1 they reached)."""
    return choose_postprocess(score_postprocess_grid(head, outputs, truths, annotated, painted))


def tuning_planes(n_planes: Sequence[int], limit: int = TUNE_MAX_PIXELS) -> list[int]:
    """Indices of the labelled planes (given their pixel counts) to predict for tuning: all of them while
    their pixels stay under `limit`, else evenly spaced ones that do."""
    sizes = np.asarray(n_planes, dtype=float)
    if sizes.sum() <= limit:
        return list(range(sizes.size))
    keep = max(1, int(limit // max(sizes.mean(), 1.0)))
    return sorted(set(np.linspace(0, sizes.size - 1, keep).round().astype(int).tolist()))


__all__ = ["ShapeObjective", "choose_postprocess", "decoded_grid", "instance_ids", "score_postprocess_grid",
           "tune_postprocess", "tuning_planes"]
