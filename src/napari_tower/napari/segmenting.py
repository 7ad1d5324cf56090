"""The widget's prediction workflows: 4. Segment > Predict and 5. Correct and retrain.

Retrain from corrections calls the core's `segment.retrain.retrain`, the same function a
headless run uses; this module only turns the layers into its inputs and writes the new
prediction back, by the layer-writing policy of `layers.reusable`.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ..config import FinetuneConfig, PredictConfig, RetrainConfig
from ..errors import TowerError
from ..model_bundle import ModelBundle
from .host import Tower
from .layers import current_plane, image_from_layer, label_shape, labels_to_planes, reusable
from .sections import OWNED, SCOPES
from .session import LayerTag, PredictionRecord
from .training import copy_planes, finetune_config, painted_planes
from .workers import progress_adapter


def predict_config(w: Tower) -> PredictConfig:
    cfg = w.segment.predict_config()
    cfg.device = w.device()
    return cfg


def segmenter_and_image(w: Tower, action: str) -> tuple[ModelBundle, Any]:
    """The current segmenter and the Segment tab's image layer, or a TowerError saying which is missing."""
    ckpt = w.session.segmenter
    if ckpt is None:
        raise TowerError(f"no segmenter yet: fine-tune one (Segment tab) or load a model, then {action}")
    image_layer = w.segment.image.layer()
    if image_layer is None:
        raise TowerError(f"no image layer to {action}: choose one in the Segment tab")
    return ckpt, image_layer


def predict(w: Tower) -> None:
    from ..segment import Predictor

    ckpt, image_layer = segmenter_and_image(w, "predict")
    image = image_from_layer(image_layer)
    planes = ([current_plane(image_layer, w.viewer.dims.point)]
              if w.segment.scope.currentText() == SCOPES[0] else list(range(image.shape[0])))
    if ckpt.spatial_dims == 3:  # a 3D model predicts whole volumes: "current slice" is the volume around it
        if image.z_size < 2:
            raise TowerError(f"the segmenter is a 3D model but '{image_layer.name}' is not a z-stack: choose a "
                             "z-stack, or fine-tune a model in 2D planes mode (1. Data > Mode)")
        first = sorted({p // image.z_size * image.z_size for p in planes})
        planes = [p for f in first for p in range(f, f + image.z_size)]
    tag = LayerTag.of(image_layer)
    cfg = predict_config(w)

    def job(callback, should_stop):
        predictor = Predictor(ckpt, cfg)
        return predictor.predict(image, planes, progress_adapter(callback, "predict"), should_stop)

    def finished(prediction, stopped: bool) -> None:
        layer = write_prediction(w, tag, prediction, planes, str(ckpt.target))
        if layer is not None and cfg.probabilities:
            write_probabilities(w, tag.layer(w.viewer.layers), prediction, planes)
        if layer is not None:
            w.show_info(f"Predicted {len(planes)} plane(s) into '{layer.name}'. Correct it with the paint "
                        "and erase tools, then Retrain from corrections.")
        for warning in prediction.warnings if layer is not None else ():
            w.show_warning(warning)

    w.start_job("predict", job, finished)


def write_prediction(w: Tower, tag: LayerTag, prediction: Any, planes: list[int], target: str,
                     into: Any = None, expected: np.ndarray | None = None) -> Any | None:
    """Write labels for `planes` into the image's output layer (or `into`), or a new layer.

    Nothing is written when the image layer was removed or changed while the job ran; a layer the user
    edited while the job ran (its content differs from `expected`) is left alone and a new layer is added.
    """
    layers = w.viewer.layers
    problem = tag.problem(layers)
    if problem:
        w.show_warning(f"{problem} while the job ran: its result was dropped; run it again")
        return None
    image_layer = tag.layer(layers)
    shape = label_shape(image_layer)
    flat = (int(np.prod(shape[:-2])),) + shape[-2:]
    layer = into if into is not None else w.session.output_for(image_layer, layers)
    if not reusable(layer, layers, shape, expected):
        if layer is not None and expected is not None and reusable(layer, layers, shape):
            w.show_warning(f"'{layer.name}' was edited while retraining: the new prediction went into a new "
                           "layer, your edits are untouched")
        layer = None
    old = w.session.record_for(layer) if layer is not None else None
    data = np.zeros(flat, np.int32) if layer is None else np.array(layer.data, dtype=np.int32).reshape(flat)
    data[planes] = prediction.labels
    if layer is None:
        layer = w.viewer.add_labels(data.reshape(shape), name=f"{image_layer.name} tower labels",
                                    scale=image_layer.scale, translate=image_layer.translate,
                                    metadata={OWNED: "labels"}, opacity=0.5)
    else:
        layer.data = data.reshape(shape)
    written = old.written.copy() if old is not None and old.written.shape == flat else data.copy()
    written[planes] = prediction.labels
    done = sorted(set(old.planes if old is not None else ()) | set(planes))
    w.session.record(layer, PredictionRecord(tag, weakref.ref(layer), written, done, target))
    w.correct.labels.refresh()
    w.correct.labels.set_layer(layer)
    return layer


def write_probabilities(w: Tower, image_layer: Any, prediction: Any, planes: list[int]) -> None:
    """The foreground probability of `planes` into the image's probability layer (or a new one)."""
    shape = label_shape(image_layer)
    flat = (int(np.prod(shape[:-2])),) + shape[-2:]
    written = w.session.probabilities
    old = written.layer(id(image_layer), w.viewer.layers)
    data = (np.array(old.data, np.float32).reshape(flat) if reusable(old, w.viewer.layers, shape)
            else np.zeros(flat, np.float32))
    data[planes] = 1.0 - prediction.probabilities[:, 0]

    def add(values: np.ndarray) -> Any:
        return w.viewer.add_image(values, name=f"{image_layer.name} tower probabilities", scale=image_layer.scale,
                                  translate=image_layer.translate, colormap="magma", contrast_limits=(0.0, 1.0),
                                  blending="additive", visible=False, metadata={OWNED: "probabilities"})

    written.write(id(image_layer), w.viewer.layers, data.reshape(shape), add, check_edits=False)


# ----------------------------------------------------------------------------------------------- 5. retrain


def retrain_config(w: Tower) -> RetrainConfig:
    cfg = w.correct.config()
    cfg.device = w.device()
    return cfg


def fine_tuning_annotations(w: Tower, corrected_layer: Any) -> list[tuple[Any, np.ndarray]]:
    """The image and annotations chosen under 4. Segment (what the model was fine-tuned on), as (image, labels)
    of their annotated planes, for a retrain to replay beside the corrections; none when they are missing,
    empty or the very layer being corrected."""
    image_layer, labels_layer = w.segment.image.layer(), w.segment.labels.layer()
    if image_layer is None or labels_layer is None or labels_layer is corrected_layer:
        return []
    try:
        labels = labels_to_planes(labels_layer, image_layer)
    except TowerError:  # annotations that do not fit the image: nothing to replay
        return []
    planes = painted_planes(labels)
    if not planes:
        return []
    return [(copy_planes(image_from_layer(image_layer), planes), labels[planes])]


def retrain(w: Tower) -> None:
    from ..segment.retrain import retrain as run_retrain
    from .live import live_preview_hook, save_round
    from .step_sizing import remember_step_time

    layer = w.correct.labels.layer()
    if layer is None:
        raise TowerError("no predicted Labels layer: Predict first, correct the result, then retrain")
    record = w.session.record_for(layer)
    if record is None:
        raise TowerError(f"'{layer.name}' holds no napari-tower prediction: Predict first, correct its result "
                         "with napari's tools, then retrain")
    ckpt = w.session.segmenter
    if ckpt is None:
        raise TowerError("no segmenter to retrain: fine-tune or load one first")
    problem = record.image.problem(w.viewer.layers)
    if problem:
        raise TowerError(f"cannot retrain: {problem} since the prediction; Predict again, then correct")
    image_layer = record.image.layer(w.viewer.layers)
    current = labels_to_planes(layer, image_layer)
    planes = record.planes
    n_changed = int(record.changed(current)[planes].sum())
    if n_changed == 0:
        raise TowerError(f"no corrections in '{layer.name}' yet: fix the prediction with napari's paint, "
                         "fill or erase tools, then retrain")
    image = image_from_layer(image_layer)
    # Batch, patch and device of 2. Pretrain; the rest (steps, seed, weight of edits) is the retrain's own.
    model = ckpt.config.get("model") or {}  # the segmenter's mode, whatever 1. Data > Mode shows now
    cfg, pcfg = retrain_config(w), predict_config(w)
    tcfg = finetune_config(w, FinetuneConfig(), dims=str(model.get("dims", "2d")))
    tcfg.model.voxel_size = tuple(model.get("voxel_size", tcfg.model.voxel_size))
    previous = record.written

    w.autosave.save_now()  # the corrections, before anything else can happen to them
    save_round(w, layer, np.asarray(layer.data).copy())  # a version the user can go back to
    live = live_preview_hook(w, image_layer, ckpt.spatial_dims)

    replay = fine_tuning_annotations(w, layer)

    def job(callback, should_stop):
        return run_retrain(ckpt, image, previous, current, cfg, planes, callback, should_stop,
                           finetune_cfg=tcfg, predict_cfg=pcfg, on_step=live(callback), replay=replay)

    def finished(result, stopped: bool) -> None:
        w.session.segmenter = result.model
        w.update_models()
        remember_step_time(w, result.training.last, tcfg)
        if result.prediction is None:
            w.autosave.save_now()
            w.show_info("Retraining stopped; the model so far is kept. Retrain again or Predict.")
            return
        out = write_prediction(w, record.image, result.prediction, planes, str(ckpt.target), into=layer,
                               expected=current)
        w.autosave.save_now()  # the retrained model and its new prediction
        if out is not None:
            w.show_info(f"Retrained on {n_changed} corrected pixel(s) and predicted again into '{out.name}'.")

    w.start_job("retrain", job, finished, on_failure=live.discard)
