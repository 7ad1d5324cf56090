"""The widget's training workflows: 2. Pretrain, 3. Preview corruptions and 4. Segment > Fine-tune.

Each workflow reads its settings from the sections, turns layers into arrays on the GUI thread,
runs the core call as a job (`Tower.start_job`) and writes the result back when it is done.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..config import DataConfig, FinetuneConfig, ModelConfig, PretrainConfig
from ..errors import TowerError
from ..generalist import resolve_init
from ..volume_defaults import FIELDS, VolumeDefaults, apply_volume_defaults, describe_applied, left_at_default
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
    cfg = pretrain_config(w)
    if cfg.model.dims == "3d":
        require_volumes(images)
    init = resolve_init(w.train.start.value())  # the generalist is checked against its hash here, not in the job
    if init is not None:  # continuing a checkpoint: its network shape, whatever the size box says
        from ..model_bundle import ModelBundle

        start = ModelBundle.load(init, "pretrained")
        cfg.model.base, cfg.model.depth = start.base, start.depth
        check_mode_fits(start, cfg)

    took = volume_defaults_note(w, cfg)

    def job(callback, should_stop):
        return run_pretrain(images, cfg, callback=callback, should_stop=should_stop, init=init)

    def finished(result, stopped: bool) -> None:
        w.session.pretrained = result.checkpoint
        w.update_models()
        what = f"stopped at step {result.last.step}; checkpoint kept" if stopped else "finished"
        w.show_info(f"Pretraining ({cfg.method}) {what}{f' ({took})' if took else ''}. Next: fine-tune on a few "
                    "labels (4. Segment).")

    w.start_job("pretrain", job, finished)


def pretrain_config(w: Tower) -> PretrainConfig:
    """2. Pretrain's settings with the mode and voxel size of 1. Data > Mode, validated; in 3D mode the patch,
    slices and batch left at their defaults become the 3D ones (`volume_defaults`)."""
    cfg = w.volume.apply(w.train.config())
    apply_volume_defaults(cfg, set_by_user(w))
    cfg.validate()
    return cfg


def set_by_user(w: Tower) -> set[str]:
    """The patch, slices and batch controls of 2. Pretrain the user moved off their (2D) defaults.

    A control always holds a value, so one at its default counts as "not set": in 3D mode it stands for the 3D
    default of the run (pretraining or fine-tuning), which the controls' tooltips name.
    """
    return set(FIELDS) - left_at_default(w.train.controls.fill(PretrainConfig()))


def volume_settings(w: Tower) -> tuple[VolumeDefaults, VolumeDefaults]:
    """What 3D pretraining and 3D fine-tuning would use with 2. Pretrain's controls as they are."""
    raw, given = w.train.controls.fill(PretrainConfig()), set_by_user(w)
    out = []
    for cls in (PretrainConfig, FinetuneConfig):
        cfg = cls(batch=raw.batch, data=DataConfig(patch=raw.data.patch, patch_z=raw.data.patch_z),
                  model=ModelConfig(dims="3d"))
        apply_volume_defaults(cfg, given)
        out.append(VolumeDefaults(cfg.data.patch, cfg.data.patch_z, cfg.batch))
    return out[0], out[1]


def volume_defaults_note(w: Tower, cfg: PretrainConfig | FinetuneConfig) -> str:
    """Which 3D defaults a config from `pretrain_config`/`finetune_config` took ('' in 2D or when none)."""
    raw = copy.deepcopy(cfg)
    raw.data.patch, raw.data.patch_z, raw.batch = w.train.patch.value, w.train.patch_z.value, w.train.batch.value
    return describe_applied(apply_volume_defaults(raw, set_by_user(w)), cfg)


def check_mode_fits(init: Any, cfg: Any) -> None:
    """Refuse to continue a 2D model in 3D mode or a 3D one in 2D mode, saying which switch to use."""
    from ..model_bundle import ModelBundle

    if init is None or (not isinstance(init, ModelBundle) and cfg.model.dims == "2d"):
        return  # a file in 2D mode: the checkpoint loader checks it as before
    dims = (init if isinstance(init, ModelBundle) else ModelBundle.load(init)).spatial_dims
    if dims != cfg.model.spatial_dims:
        mode = "3D volume" if dims == 3 else "2D planes"
        raise TowerError(f"the model training starts from is a {dims}D model but 1. Data > Mode is "
                         f"{cfg.model.spatial_dims}D: switch the mode to {mode}, or start from scratch")


def require_volumes(images: list[Any]) -> None:
    """3D mode needs z-stacks: a TowerError naming the first image that is not one."""
    for image in images:
        if image.z_size < 2:
            raise TowerError(f"'{image.source}' is not a z-stack (axes {image.axes}): 3D volume mode needs z-stacks; "
                             "switch 1. Data > Mode to 2D planes, or choose a z-stack")


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
    if w.volume.dims() == "3d":
        preview_volume(w, layer, image, plane_index)
        return
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


def preview_volume(w: Tower, layer: Any, image: Any, plane_index: int) -> None:
    """3D mode: every corruption of the volume in view (at most 64 slices around the current one), as 3D layers."""
    from ..data import compute_normalisation
    from .volume_preview import preview_volume as corruptions
    from .volume_preview import z_window

    require_volumes([image])
    z_size = image.z_size
    first = plane_index // z_size * z_size  # the volume (time point) the viewer shows
    z0, nz = z_window(plane_index - first, z_size)
    y0, x0, crop = view_crop(w.viewer, layer, image.shape[2:])
    block = np.asarray(image.data[first + z0:first + z0 + nz, :, y0:y0 + crop[0], x0:x0 + crop[1]])
    tag = LayerTag.of(layer)
    seed = w.preview.config().seed

    def job(callback, should_stop):
        norm = compute_normalisation(image.data, image.source)
        volume = np.moveaxis(norm.apply(block, channel_axis=1), 1, 0)  # (C, Z, Y, X)
        return corruptions(volume, seed=seed)

    def finished(result: tuple[dict[str, np.ndarray], bool], stopped: bool) -> None:
        views, in_3d = result
        problem = tag.problem(w.viewer.layers)
        if problem:
            w.show_warning(f"{problem} while previewing: preview dropped")
            return
        show_previews(w, layer, {k: np.moveaxis(v, 0, 1) for k, v in views.items()}, (z0, y0, x0))
        how = "3D corruptions" if in_3d else "2D corruptions slice by slice (this version has no 3D proxy tasks)"
        w.show_info(f"Previewed {len(views)} {how} of '{layer.name}', slices {z0}..{z0 + nz - 1}: "
                    "toggle 2D/3D view (bottom left of the viewer) to see them as volumes.")

    w.start_job("preview", job, finished)


def show_previews(w: Tower, layer: Any, views: dict[str, np.ndarray], offset: tuple[int, ...]) -> None:
    """One image layer per corruption, replacing this widget's earlier previews.

    `views` hold (C, Y, X) planes at `offset` (y, x), or in 3D mode (Z, C, Y, X) volumes at (z, y, x).
    """
    n = len(offset)
    scale = np.asarray(layer.scale)[-n:]
    translate = np.asarray(layer.translate)[-n:] + np.asarray(offset) * scale
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

        if n == 3:  # (Z, C, Y, X): a volume per channel is not shown; RGB moves last, one channel drops its axis
            data = np.moveaxis(view, 1, -1) if rgb else (view[:, 0] if view.shape[1] == 1 else view)
        else:
            data = np.moveaxis(view, 0, -1) if rgb else (view[0] if view.shape[0] == 1 else view)
        new, reused = previews.write(name, layers, data, add, check_edits=False, drop_old=True)
        if reused:
            new.translate = translate
            new.contrast_limits = (0.0, 1.0)


# ----------------------------------------------------------------------------------------------- 4. fine-tune


def finetune_config(w: Tower, base: FinetuneConfig | None = None, dims: str | None = None) -> FinetuneConfig:
    """`base` (default: 4. Segment's settings) with the batch, patch, model size and device of 2. Pretrain and the
    mode and voxel size of 1. Data (`dims`, when given, instead of the mode: a retrain keeps its model's); in 3D
    the patch, slices and batch left at their defaults become the 3D fine-tuning ones (`volume_defaults`)."""
    t = w.volume.apply(w.train.config())  # the controls as they are: fine-tuning has its own 3D defaults
    if dims is not None:
        t.model.dims = dims
    cfg = base if base is not None else w.segment.finetune_config()
    cfg.batch, cfg.device = t.batch, t.device
    cfg.data = DataConfig(patch=t.data.patch, patch_z=t.data.patch_z)
    cfg.model = ModelConfig(base=t.model.base, dims=t.model.dims, voxel_size=t.model.voxel_size)
    apply_volume_defaults(cfg, set_by_user(w))
    cfg.validate()
    return cfg


def painted_planes(labels: np.ndarray) -> list[int]:
    """Planes of (planes, Y, X) labels holding any annotation: the others are unannotated, not background."""
    return [p for p in range(labels.shape[0]) if labels[p].any()]


def copy_planes(image: Any, planes: list[int]) -> Any:
    """`planes` of an `Image` as a new in-memory `Image` (a job keeps training on it whatever the layer does)."""
    from ..data import from_array

    return from_array(np.asarray(image.data[planes]), image.source, axes="ZCYX")


def finetune(w: Tower) -> None:
    from ..segment import finetune as run_finetune
    from .live import live_preview_hook
    from .step_sizing import remember_step_time

    image_layer, labels_layer = w.segment.image.layer(), w.segment.labels.layer()
    if image_layer is None:
        raise TowerError("no image layer: open an image and choose it under 4. Segment")
    if labels_layer is None:
        raise TowerError("no Labels layer with annotations: add one (New labels layer), paint a few objects, "
                         "and choose it under 4. Segment > annotations")
    image = image_from_layer(image_layer)
    labels = labels_to_planes(labels_layer, image_layer)
    cfg = finetune_config(w)
    planes = painted_planes(labels)  # train on the annotated planes only
    if not planes:
        raise TowerError(f"labels layer '{labels_layer.name}' is empty: paint a few objects"
                         + {"sparse": " (1 = background, 2.. = classes)",
                            "sparse_instance": " (1 = background, 2.. = one id per object)"}.get(cfg.target, "")
                         + ", then fine-tune")
    init = w.session.pretrained if w.session.pretrained is not None else resolve_init(w.train.start.value())
    check_mode_fits(init, cfg)
    if cfg.model.dims == "3d":
        # Volumes stay whole: the 3D fine-tuning reads unpainted slices as unannotated (issue 17).
        require_volumes([image])
    elif len(planes) < labels.shape[0]:
        image, labels = copy_planes(image, planes), labels[planes]
    live = live_preview_hook(w, image_layer, cfg.model.spatial_dims)
    took = volume_defaults_note(w, cfg)

    def job(callback, should_stop):
        return run_finetune([image], [labels], cfg, init=init, callback=callback, should_stop=should_stop,
                            on_step=live(callback))

    def finished(result, stopped: bool) -> None:
        w.session.segmenter = result.checkpoint
        w.update_models()
        remember_step_time(w, result.last, cfg)
        dice = f", best validation Dice {result.best_val_dice:.3f}" if result.best_val_dice is not None else ""
        start = ("from the pretrained model" if init is w.session.pretrained and init is not None else
                 f"from {w.train.start.currentText()}" if init is not None else "from scratch (no pretrained model)")
        w.show_info(f"Fine-tuned {start} on {len(planes)} annotated plane(s){' (stopped)' if stopped else ''}"
                    f"{dice}{f'; {took}' if took else ''}. Next: Predict.")

    w.start_job("fine-tune", job, finished, on_failure=live.discard)
