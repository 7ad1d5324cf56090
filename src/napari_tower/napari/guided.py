"""The guided correct-and-retrain loop in the widget: where to correct next, going back to an earlier round, and
whether pretraining helped.

- **Next region to correct** predicts the current plane and its flips, maps their disagreement
  (`segment.uncertainty`, the code benchmarks/bench_loop.py measures), moves the camera to the most uncertain
  region not yet suggested and outlines it in a Shapes layer.
- **Go back** writes a chosen round of the label history (saved by every retrain, `live.save_round`) into the
  corrected labels layer.
- **Did pretraining help?** fine-tunes from the pretrained start and from scratch with the same budget, holding
  out the last suggested region (`segment.pretraining_check`).
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import numpy as np

from ..config import FinetuneConfig
from ..errors import TowerError
from ..segment.uncertainty import Region
from .host import Tower
from .layers import current_plane, image_from_layer, labels_to_planes
from .sections import OWNED

NEXT_REGION_NAME = "tower next region"


# ----------------------------------------------------------------------------------------------- next region


def next_region(w: Tower) -> None:
    """Find the most uncertain region of the current plane not yet suggested; move there and outline it."""
    from ..segment import Predictor
    from ..segment.uncertainty import flip_disagreement, suggest_region
    from .segmenting import predict_config, segmenter_and_image

    ckpt, image_layer = segmenter_and_image(w, "ask for a region")
    image = image_from_layer(image_layer)
    plane = current_plane(image_layer, w.viewer.dims.point)
    size = int(w.loop_panel.region_size.value)
    done = [Region(0, r.y, r.x, r.size) for r in w.loop.regions.get(id(image_layer), []) if r.plane == plane]
    # Without test-time flips: their average is the same for every flip, so the views would never disagree.
    cfg = dataclasses.replace(predict_config(w), tta=1)
    ref = weakref.ref(image_layer)

    def job(callback, should_stop):
        predictor = Predictor(ckpt, cfg)
        norm = predictor.normalisation_for(image)
        # Test-time flips rather than entropy: in the loop benchmark (docs/benchmarks.md) entropy pointed at
        # hesitant but correct tiles and did worse; flips cost 4 predictions of the plane instead of 1.
        u = flip_disagreement(lambda plane_data: predictor.probabilities(plane_data, norm), image.data[plane],
                              predictor.target)
        return suggest_region([u], size, done)

    def finished(region: Region | None, stopped: bool) -> None:
        layer = ref()
        if layer is None or not any(layer is l for l in w.viewer.layers):
            w.show_warning("the image layer was removed while looking for a region: nothing to show")
            return
        if region is None:
            w.show_info(f"Every {size} x {size} region of this plane has been suggested: retrain, or Predict the "
                        "whole plane and check it.")
            return
        region = Region(plane, region.y, region.x, region.size)
        w.loop.regions.setdefault(id(layer), []).append(region)
        show_region(w, layer, region)
        w.show_info(f"Correct the outlined {size} x {size} region (rows {region.y}-{region.y + region.size}, "
                    f"columns {region.x}-{region.x + region.size}): the model is least sure there. Then Retrain.")

    w.start_job("next region", job, finished)


def show_region(w: Tower, image_layer: Any, region: Region) -> None:
    """Centre the camera on `region` and outline it (replacing the previous outline)."""
    scale = np.asarray(image_layer.scale)[-2:]
    translate = np.asarray(image_layer.translate)[-2:]
    y0, x0 = region.y, region.x
    y1, x1 = y0 + region.size, x0 + region.size
    rect = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)
    layer = w.loop.layer(w.loop.outline_ref, w.viewer.layers)
    if layer is None:
        layer = w.viewer.add_shapes([rect], shape_type="rectangle", name=NEXT_REGION_NAME, edge_color="yellow",
                                    face_color="transparent", edge_width=max(2, region.size // 40), scale=scale,
                                    translate=translate, metadata={OWNED: "preview"})
        w.loop.outline_ref = weakref.ref(layer)
    else:
        layer.data = [rect]
        layer.edge_color = "yellow"
    cy, cx = translate + scale * np.asarray(region.centre)
    center = list(w.viewer.camera.center)
    center[-2:] = [cy, cx]
    w.viewer.camera.center = tuple(center)
    labels = w.correct.labels.layer()
    if labels is not None:  # back to the labels layer, ready to paint
        w.viewer.layers.selection.active = labels


# ----------------------------------------------------------------------------------------------- label history


def go_back(w: Tower) -> None:
    """Write the chosen version of the label history into the corrected labels layer."""
    number = w.loop_panel.chosen_version()
    if number is None:
        raise TowerError("the label history is empty: each Retrain saves the corrected labels as a round")
    layer = w.correct.labels.layer()
    if layer is None:
        raise TowerError("no labels layer to restore into: choose one under corrected labels")
    data = w.loop.history.load(number)
    shape = tuple(np.shape(layer.data))
    if int(np.prod(data.shape)) != int(np.prod(shape)):
        raise TowerError(f"round {number} has labels of shape {data.shape} but '{layer.name}' is {shape}: choose "
                         "the labels layer that round was saved from")
    layer.data = data.reshape(shape).astype(np.asarray(layer.data).dtype, copy=False)
    w.show_info(f"Restored round {number} into '{layer.name}'. Retrain to continue from it.")


# ----------------------------------------------------------------------------------------------- pretraining check


def check_pretraining(w: Tower) -> None:
    """Compare fine-tuning from the pretrained start with scratch on the last corrected region; report in words."""
    from ..generalist import resolve_init
    from ..segment.pretraining_check import check_pretraining as run_check
    from .training import finetune_config

    image_layer = w.segment.image.layer()
    if image_layer is None:
        raise TowerError("no image layer: choose one in the Segment tab")
    regions = w.loop.regions.get(id(image_layer), [])
    if not regions:
        raise TowerError("no corrected region to hold out yet: press Next region, correct it, then check")
    labels_layer = w.correct.labels.layer()
    if labels_layer is None:
        raise TowerError("no corrected labels layer: Predict, correct a region, then check")
    init = w.session.pretrained if w.session.pretrained is not None else resolve_init(w.train.start.value())
    if init is None:
        raise TowerError("nothing pretrained to compare with scratch: Pretrain, or choose start from: built-in "
                         "generalist (Pretrain tab)")
    image = image_from_layer(image_layer)
    labels = labels_to_planes(labels_layer, image_layer)
    retrain = w.correct.config()
    cfg = finetune_config(w, FinetuneConfig(steps=retrain.steps, minutes=retrain.minutes, seed=retrain.seed))
    if w.session.segmenter is not None:
        cfg.target = str(w.session.segmenter.target)
    region = regions[-1]

    def job(callback, should_stop):
        return run_check(image, labels, region, init, cfg, callback, should_stop)

    def finished(result, stopped: bool) -> None:
        w.loop.last_check = result
        w.loop_panel.check_result.setText(result.sentence())
        w.show_info(f"On the held-out region: {result.sentence()}.")

    w.start_job("pretraining check", job, finished)


__all__ = ["NEXT_REGION_NAME", "check_pretraining", "go_back", "next_region", "show_region"]
