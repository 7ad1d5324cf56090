"""The widget's training workflows: 2. Pretrain, 3. Preview corruptions and 4. Segment > Fine-tune.

Each workflow reads its settings from the sections, turns layers into arrays on the GUI thread,
runs the core call as a job (`Tower.start_job`) and writes the result back when it is done.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import DataConfig, FinetuneConfig, ModelConfig
from ..errors import TowerError
from ..generalist import resolve_init
from .host import Tower
from .layers import current_plane, image_from_layer, labels_to_planes, view_crop
from .sections import OWNED
from .session import LayerTag

PREVIEW_PREFIX = "tower preview: "


def pretrain(w: Tower) -> None:
    from ..train import pretrain as run_pretrain

    layers = w.selected_images()
    if not layers:
        raise TowerError("no image layer chosen: tick at least one image layer under 1. Data")
    images = [image_from_layer(layer) for layer in layers]
    cfg = w.train.config()
    init = resolve_init(w.train.start.value())  # the generalist is checked against its hash here, not in the job
    if init is not None:  # continuing a checkpoint: its network shape, whatever the size box says
        from ..model_bundle import ModelBundle

        start = ModelBundle.load(init, "pretrained")
        cfg.model.base, cfg.model.depth = start.base, start.depth

    def job(callback, should_stop):
        return run_pretrain(images, cfg, callback=callback, should_stop=should_stop, init=init)

    def finished(result, stopped: bool) -> None:
        w.session.pretrained = result.checkpoint
        w.update_models()
        what = f"stopped at step {result.last.step}; checkpoint kept" if stopped else "finished"
        w.show_info(f"Pretraining ({cfg.method}) {what}. Next: fine-tune on a few labels (4. Segment).")

    w.start_job("pretrain", job, finished)


# ----------------------------------------------------------------------------------------------- 3. preview


def preview(w: Tower) -> None:
    from ..data import compute_normalisation
    from ..proxy import preview as corruptions

    layers = w.selected_images() or w.segment.image.candidates()[:1]
    if not layers:
        raise TowerError("no image layer to preview: open an image first")
    layer = layers[0]
    image = image_from_layer(layer)
    plane_index = current_plane(layer, w.viewer.dims.point)
    y0, x0, crop = view_crop(w.viewer, layer, image.shape[2:])
    plane = np.asarray(image.data[plane_index, :, y0:y0 + crop[0], x0:x0 + crop[1]])
    tag = LayerTag.of(layer)
    seed = w.preview.config().seed

    def job(callback, should_stop):
        norm = compute_normalisation(image.data, image.source)
        return corruptions(norm.apply(plane, channel_axis=0), seed=seed)

    def finished(views: dict[str, np.ndarray], stopped: bool) -> None:
        problem = tag.problem(w.viewer.layers)
        if problem:
            w.show_warning(f"{problem} while previewing: preview dropped")
            return
        show_previews(w, layer, views, (y0, x0))
        w.show_info(f"Previewed {len(views)} corruptions of '{layer.name}' (plane {plane_index}).")

    w.start_job("preview", job, finished)


def show_previews(w: Tower, layer: Any, views: dict[str, np.ndarray], offset: tuple[int, int]) -> None:
    """One image layer per corruption, replacing this widget's earlier previews."""
    scale = np.asarray(layer.scale)[-2:]
    translate = np.asarray(layer.translate)[-2:] + np.asarray(offset) * scale
    rgb = bool(getattr(layer, "rgb", False))
    layers, previews = w.viewer.layers, w.session.previews
    for name in previews.keys():  # noqa: SIM118 - WrittenLayers, not a dict: keys() is a copy to remove from
        if name not in views:
            previews.remove(name, layers)
    for name, view in views.items():
        def add(data: np.ndarray, name: str = name) -> Any:
            return w.viewer.add_image(data, name=f"{PREVIEW_PREFIX}{name}", rgb=rgb, scale=scale,
                                      translate=translate, contrast_limits=(0.0, 1.0), colormap="gray",
                                      metadata={OWNED: "preview"}, visible=name == "tower")

        data = np.moveaxis(view, 0, -1) if rgb else (view[0] if view.shape[0] == 1 else view)
        new, reused = previews.write(name, layers, data, add, check_edits=False, drop_old=True)
        if reused:
            new.translate = translate
            new.contrast_limits = (0.0, 1.0)


# ----------------------------------------------------------------------------------------------- 4. fine-tune


def finetune_config(w: Tower, base: FinetuneConfig | None = None) -> FinetuneConfig:
    """`base` (default: 4. Segment's settings) with the batch, patch, model size and device of 2. Pretrain."""
    t = w.train.config()
    cfg = base if base is not None else w.segment.finetune_config()
    cfg.batch, cfg.device = t.batch, t.device
    cfg.data, cfg.model = DataConfig(patch=t.data.patch), ModelConfig(base=t.model.base)
    return cfg


def finetune(w: Tower) -> None:
    from ..data import from_array
    from ..segment import finetune as run_finetune
    from .live import live_preview_hook

    image_layer, labels_layer = w.segment.image.layer(), w.segment.labels.layer()
    if image_layer is None:
        raise TowerError("no image layer: open an image and choose it under 4. Segment")
    if labels_layer is None:
        raise TowerError("no Labels layer with annotations: add one (New labels layer), paint a few objects, "
                         "and choose it under 4. Segment > annotations")
    image = image_from_layer(image_layer)
    labels = labels_to_planes(labels_layer, image_layer)
    cfg = finetune_config(w)
    # Planes without any annotation are unannotated, not background: train on the others only.
    planes = [p for p in range(labels.shape[0]) if labels[p].any()]
    if not planes:
        raise TowerError(f"labels layer '{labels_layer.name}' is empty: paint a few objects"
                         + (" (1 = background, 2.. = classes)" if cfg.target == "sparse" else "")
                         + ", then fine-tune")
    if len(planes) < labels.shape[0]:
        image = from_array(np.asarray(image.data[planes]), image.source, axes="ZCYX")
        labels = labels[planes]
    init = w.session.pretrained if w.session.pretrained is not None else resolve_init(w.train.start.value())
    live = live_preview_hook(w, image_layer)

    def job(callback, should_stop):
        return run_finetune([image], [labels], cfg, init=init, callback=callback, should_stop=should_stop,
                            on_step=live(callback))

    def finished(result, stopped: bool) -> None:
        w.session.segmenter = result.checkpoint
        w.update_models()
        dice = f", best validation Dice {result.best_val_dice:.3f}" if result.best_val_dice is not None else ""
        start = ("from the pretrained model" if init is w.session.pretrained and init is not None else
                 f"from {w.train.start.currentText()}" if init is not None else "from scratch (no pretrained model)")
        w.show_info(f"Fine-tuned {start} on {len(planes)} annotated plane(s){' (stopped)' if stopped else ''}"
                    f"{dice}. Next: Predict.")

    w.start_job("fine-tune", job, finished, on_failure=live.discard)
