"""One round of the correct-and-retrain loop, headless: the same call the widget's Retrain makes.

The user corrects a prediction (paints, fills, erases); `retrain` continues training the segmenter on
the corrected planes, the pixels the user changed weighing `RetrainConfig.edit_weight` times more, and
predicts those planes again. Everything it needs can come from files: the model, the image, the
prediction the user started from and the corrected labels.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import FinetuneConfig, PredictConfig, RetrainConfig, from_dict
from ..data import Image, from_array
from ..errors import TowerError
from ..model_bundle import ModelBundle
from ..train.engine import Progress, ProgressCallback, StopCheck
from . import retrain3d as vol
from .finetune import FinetuneResult, StepHook, finetune
from .predict import Prediction, Predictor
from .replay import as_replay_sets, replay_weights

Model = ModelBundle  # a segmenter
RETRAIN_WARMUP = 0.1  # share of a retrain's steps over which a scaled-down rate ramps up


@dataclass
class RetrainResult:
    """The retrained model and its new prediction of the corrected planes."""

    model: Model  # the new segmenter checkpoint
    prediction: Prediction | None  # of `planes`, in that order; None when training was stopped
    planes: list[int]  # the image planes trained on and predicted
    edited: int  # how many corrected pixels weighed `edit_weight`
    training: FinetuneResult

    @property
    def stopped(self) -> bool:
        return self.prediction is None

    def labels(self, previous: np.ndarray) -> np.ndarray:
        """`previous` (planes, Y, X) with the new prediction written into the retrained planes."""
        out = np.array(previous, dtype=np.int32).reshape((-1,) + np.shape(previous)[-2:])
        if self.prediction is not None:
            out[self.planes] = self.prediction.labels
        return out.reshape(np.shape(previous))


def retrain_targets(labels: np.ndarray, target: str) -> np.ndarray:
    """A corrected prediction (planes, Y, X) as dense training labels for a model with `target`.

    Predictions use 0 = background and 1.. = classes or objects. A model trained on
    instances learns them from object ids (a foreground mask is split into its
    connected components); one trained on sparse scribbles reads 1 = background.
    """
    if target == "instance" and labels.max() <= 1:
        from skimage.measure import label

        return np.stack([label(plane > 0) for plane in labels]).astype(np.int64)
    if target == "sparse":
        return labels + 1
    return labels


def annotated_planes(previous: np.ndarray, corrected: np.ndarray) -> list[int]:
    """Planes that hold a prediction or a correction (any label): the planes a retrain learns from.

    A plane empty in both was never predicted (e.g. a prediction of one slice of a stack) and
    would otherwise teach the model that it is all background.
    """
    return [p for p in range(corrected.shape[0]) if previous[p].any() or corrected[p].any()]


def edit_weights(previous: np.ndarray, corrected: np.ndarray, edit_weight: float) -> np.ndarray:
    """Per-pixel loss weights: 1, and `edit_weight` where the user changed the prediction."""
    changed = np.asarray(corrected) != np.asarray(previous)
    return (1.0 + (edit_weight - 1.0) * changed).astype(np.float32)


def cap_edit_weight(weights: np.ndarray, edited: np.ndarray, edit_weight: float) -> np.ndarray:
    """`weights` with the edited pixels' weight lowered, where needed, so that together they weigh no more than the
    unedited pixels learnt from. A few strokes keep `edit_weight`; a correction that rewrites most of what is
    learnt from (erasing a flooded region) would otherwise dominate the loss, and a retrain on such a region
    wiped the objects out everywhere (docs/benchmarks.md, dense-to-sparse transfer with corrections)."""
    n_edited = int(edited.sum())
    rest = int(((weights > 0) & ~edited).sum())
    if n_edited == 0 or edit_weight <= 1.0:
        return weights
    capped = min(edit_weight, max(1.0, rest / n_edited))
    if capped >= edit_weight:
        return weights
    out = weights.copy()
    out[edited] *= capped / edit_weight
    return out


def retrain_finetune_config(model: Model, cfg: RetrainConfig, base: FinetuneConfig | None = None) -> FinetuneConfig:
    """The fine-tuning settings of a retrain: `base` (default: the model's own training settings) with the
    retrain's steps, seed, device, edit weight and learning rate (`lr_scale` x the model's, with a warm-up), every
    plane used, none held out for validation and no scaled copies."""
    if base is None:
        try:
            base = from_dict(FinetuneConfig, dict(model.config or {}))
        except TypeError:  # a config this version cannot read: the defaults
            base = FinetuneConfig()
    out = copy.deepcopy(base)  # finetune fills in fields of the config it gets
    out.steps, out.seed, out.device, out.edit_weight = cfg.steps, cfg.seed, cfg.device, cfg.edit_weight
    out.minutes = cfg.minutes
    if cfg.lr_scale != 1.0:  # a scaled-down rate ramps up, so the fresh optimiser's first steps stay small too
        out.lr, out.warmup = base.lr * cfg.lr_scale, max(base.warmup, RETRAIN_WARMUP)
    out.fraction, out.val_fraction = 1.0, 0.0
    # A retrain fits the user's own corrections at their own scale: scaled copies (issue 21) would take
    # most of its few steps away from the pixels just corrected.
    out.zoom = 1.0
    return out


def prediction_progress(callback: ProgressCallback | None, phase: str = "predict") -> Callable[[int, int], None] | None:
    """Turn a `(done, total)` prediction progress into Progress records (with an ETA) for `callback`."""
    if callback is None:
        return None
    t0 = time.perf_counter()

    def report(done: int, total: int) -> None:
        elapsed = time.perf_counter() - t0
        rate = done / elapsed if elapsed > 0 else 0.0
        callback(Progress(phase, done, total, elapsed_s=elapsed, eta_s=(total - done) / rate if rate else 0.0,
                          patches_per_s=rate))

    return report


def _as_planes(labels: Any, image: Image, what: str) -> np.ndarray:
    array = np.asarray(labels)
    p, _, h, w = image.shape
    if array.ndim < 2 or array.shape[-2:] != (h, w) or int(np.prod(array.shape[:-2])) != p:
        raise TowerError(f"the {what} labels have shape {array.shape} but the image {image.source} has {p} plane(s) "
                         f"of {h} x {w}: use labels made for that image")
    return array.reshape((p, h, w))


def retrain(
    model: Model | str | os.PathLike,
    image: Image | np.ndarray,
    previous: np.ndarray,
    corrected: np.ndarray,
    cfg: RetrainConfig | None = None,
    planes: Sequence[int] | None = None,
    callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    finetune_cfg: FinetuneConfig | None = None,
    predict_cfg: PredictConfig | None = None,
    on_step: StepHook | None = None,
    reviewed: np.ndarray | None = None,
    replay: Sequence[tuple[Image | np.ndarray, np.ndarray]] = (),
) -> RetrainResult:
    """Retrain a segmenter on the user's corrections of its prediction, then predict the corrected planes again.

    model: a segmenter (`ModelBundle`, or the path of a `.pt` file).
    image: the image the prediction was made for (`Image`, or an array whose axes `from_array` can guess).
    previous: the prediction as it was written, before the user's edits; (planes, Y, X) or the image's shape.
    corrected: the same labels after the user's edits.
    cfg: steps (or minutes), weight of the edited pixels, seed and device (`RetrainConfig`, default when None).
    planes: the planes to learn from and predict again; default: those holding a prediction or a correction.
    callback, should_stop: progress records and the stop check, as for `finetune`.
    finetune_cfg: the other training settings (batch, patch, learning rate...); default: the model's own.
    predict_cfg: how to predict afterwards; default: `PredictConfig` on `cfg.device`.
    on_step: called with (step, model) after each training step, as for `finetune` (e.g. a live preview).
    reviewed: the pixels the user has checked, e.g. the regions corrected so far (nonzero = checked), in the
        labels' shape; the rest of the prediction is then not learnt from. Default: every pixel of the planes
        counts, i.e. what the user left uncorrected is accepted as it is.
    replay: (image, labels) pairs the model was fine-tuned on (labels (planes, Y, X), as given to `finetune`).
        Windows of them holding `cfg.replay` times as many pixels as the corrections carry train beside the
        corrections (`segment.replay`), so a short retrain does not undo what they taught. 2D models only.

    The corrected planes become dense training targets (`retrain_targets`, for the model's target kind);
    every pixel of them counts, the changed ones `cfg.edit_weight` times. Same inputs and seed, same
    weights and prediction. A 3D model (`ModelBundle.spatial_dims` 3) trains on and predicts the whole
    volumes holding those planes (`retrain3d`): `image` is the stack, labels (planes, Y, X) or (Z, Y, X).
    Raises TowerError when nothing was corrected on those planes.
    """
    cfg = cfg or RetrainConfig()
    cfg.validate()
    ckpt: Model = model if isinstance(model, ModelBundle) else ModelBundle.load(model, "segmenter")
    ckpt.require_segmenter("the model to retrain")
    if not isinstance(image, Image):
        image = from_array(image)
    previous = _as_planes(previous, image, "previous")
    corrected = _as_planes(corrected, image, "corrected")
    chosen = annotated_planes(previous, corrected) if planes is None else [int(p) for p in planes]
    if not chosen:
        raise TowerError("the prediction and the corrected labels are empty: predict first, correct, then retrain")
    annotated = np.ones(len(chosen), bool)
    if ckpt.spatial_dims == 3:
        # A 3D model learns from whole volumes; their slices with neither prediction nor correction carry no loss.
        marked = set(chosen)
        chosen = vol.volume_planes(chosen, image)
        annotated = np.array([p in marked for p in chosen])
    weights = edit_weights(previous[chosen], corrected[chosen], cfg.edit_weight) * annotated[:, None, None]
    if reviewed is not None:
        weights = weights * (_as_planes(reviewed, image, "reviewed")[chosen] != 0)
    changed = (corrected[chosen] != previous[chosen]) & (weights > 0)
    edited = int(changed.sum())
    if edited == 0:
        raise TowerError("no corrections: the corrected labels equal the prediction on the planes to retrain; fix "
                         "the prediction (paint, fill, erase), then retrain")
    weights = cap_edit_weight(weights, changed, cfg.edit_weight)
    if ckpt.spatial_dims == 3:
        targets = vol.volume_retrain_targets(corrected[chosen], image.z_size, str(ckpt.target), annotated)
        subset = vol.volume_subset(image, chosen)
    else:
        targets = retrain_targets(corrected[chosen], str(ckpt.target))
        subset = from_array(np.asarray(image.data[chosen]), image.source, axes="ZCYX")
    tcfg = retrain_finetune_config(ckpt, cfg, finetune_cfg)
    pcfg = copy.deepcopy(predict_cfg) if predict_cfg is not None else PredictConfig(device=cfg.device)
    images, labels, loss_weights = [subset], [targets], [weights]
    if replay and cfg.replay > 0 and ckpt.spatial_dims == 2:
        sets = as_replay_sets(replay)
        sparse = str(ckpt.target) == "sparse" or tcfg.target in ("sparse", "sparse_instance")  # 0 = unannotated
        drawn = replay_weights(sets, cfg.replay * float((weights > 0).sum()), tcfg.data.patch, sparse,
                               np.random.default_rng([cfg.seed, 7]))
        kept = [(s, w) for s, w in zip(sets, drawn) if w.any()]
        images += [s.image for s, _ in kept]
        labels += [s.labels for s, _ in kept]
        loss_weights += [w for _, w in kept]

    training = finetune(images, labels, tcfg, init=ckpt, weights=loss_weights, callback=callback,
                        should_stop=should_stop, on_step=on_step)
    if training.last.stopped:
        return RetrainResult(training.checkpoint, None, chosen, edited, training)
    predictor = Predictor(training.checkpoint, pcfg)
    if ckpt.spatial_dims == 3:
        prediction = vol.predict_volumes(predictor, subset, prediction_progress(callback))
    else:
        prediction = predictor.predict(subset, None, prediction_progress(callback), should_stop)
    return RetrainResult(training.checkpoint, prediction, chosen, edited, training)


__all__ = ["RetrainResult", "annotated_planes", "cap_edit_weight", "edit_weights", "retrain", "retrain_finetune_config",
           "retrain_targets"]
