"""The live preview of training jobs and the label-history snapshot of each retrain, in the widget.

Fine-tune and retrain jobs carry a `segment.live_preview.LivePreview` hook that predicts the part of the image in
view every few seconds; its labels reach the GUI thread as a `GuiCall` and go into one preview Labels layer.
Every retrain first saves the corrected labels as a version of the label history (`label_history.LabelHistory`).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ..errors import TowerError
from .host import Tower
from .layers import current_plane, image_from_layer, view_crop
from .sections import OWNED
from .workers import GuiCall

LIVE_PREVIEW_NAME = "tower live preview"
LIVE_PREVIEW_EVERY_S = 3.0
LIVE_PREVIEW_SIZE = 256  # px: the crop around the view's centre a live preview predicts


def live_preview_hook(w: Tower, image_layer: Any, spatial_dims: int = 2) -> Any:
    """`make(callback)`: the `finetune(on_step=...)` hook previewing the part of `image_layer` in view.

    The crop is read here, on the GUI thread; the job calls `make` with its progress callback. `make` returns None
    when the image cannot be read (the job then reports that itself), and for a 3D model (`spatial_dims` 3).
    """
    from ..data import compute_normalisation
    from ..segment.live_preview import LivePreview

    if spatial_dims == 3:  # TODO(issue 17): a live preview of a 3D model needs a sub-volume crop, not one plane
        return _no_live_preview()
    try:
        image = image_from_layer(image_layer)
    except TowerError:
        return lambda callback: None
    plane = current_plane(image_layer, w.viewer.dims.point)
    y0, x0, (ch, cw) = view_crop(w.viewer, image_layer, image.shape[2:], most=LIVE_PREVIEW_SIZE)
    crop = np.asarray(image.data[plane, :, y0:y0 + ch, x0:x0 + cw])
    ref = weakref.ref(image_layer)
    # The layer is made now, empty: adding a layer takes ~0.5 s of the GUI thread, an update ~20 ms.
    existed = w.loop.layer(w.loop.live_ref, w.viewer.layers) is not None
    made = preview_layer(w, image_layer, np.zeros((ch, cw), np.uint8), (y0, x0))
    updates = w.loop.live_updates

    running: list[Any] = []  # the job's LivePreview, once the job has made it (a weak reference)

    def make(callback: Any) -> LivePreview:
        norm = compute_normalisation(image.data, image.source)

        def emit(labels: np.ndarray, step: int, offset: tuple[int, int]) -> None:
            callback(GuiCall(show_live_preview, (w, ref, labels, offset, step)))

        preview = LivePreview(crop, norm, emit, LIVE_PREVIEW_EVERY_S, offset=(y0, x0))
        running.append(weakref.ref(preview))
        return preview

    def follow(event: Any = None) -> None:
        """The view moved (pan, zoom, another plane): preview the part now in view (GUI thread)."""
        preview = running[-1]() if running else None
        layer = ref()
        if running and (preview is None or layer is None):  # the job ended or the image went: stop following
            _disconnect(w.viewer, follow)
            return
        if preview is None or layer is None:
            return
        y, x, (h, wd) = view_crop(w.viewer, layer, image.shape[2:], most=LIVE_PREVIEW_SIZE)
        at = current_plane(layer, w.viewer.dims.point)
        if ((y, x), at) != (preview.offset, follow.plane):
            follow.plane = at
            preview.move(np.asarray(image.data[at, :, y:y + h, x:x + wd]), (y, x))

    follow.plane = plane  # type: ignore[attr-defined]
    w.viewer.camera.events.center.connect(follow)
    w.viewer.dims.events.current_step.connect(follow)

    def discard() -> None:
        """A job that failed (bad input) leaves the layers as they were: drop the preview layer it added."""
        _disconnect(w.viewer, follow)
        if not existed and w.loop.live_updates == updates and any(made is l for l in w.viewer.layers):
            w.viewer.layers.remove(made)

    make.discard = discard  # type: ignore[attr-defined]
    return make


def _disconnect(viewer: Any, follow: Any) -> None:
    viewer.camera.events.center.disconnect(follow)
    viewer.dims.events.current_step.disconnect(follow)


def _no_live_preview() -> Any:
    def make(callback: Any) -> None:
        return None

    make.discard = lambda: None  # type: ignore[attr-defined]
    return make


def preview_layer(w: Tower, image_layer: Any, labels: np.ndarray, offset: tuple[int, int]) -> Any:
    """Write `labels` into the live preview layer at `offset` of `image_layer` (made when missing)."""
    scale = np.asarray(image_layer.scale)[-2:]
    translate = np.asarray(image_layer.translate)[-2:] + np.asarray(offset) * scale
    layer = w.loop.layer(w.loop.live_ref, w.viewer.layers)
    if layer is None or layer.data.shape != labels.shape:
        if layer is not None:
            w.viewer.layers.remove(layer)
        active = w.viewer.layers.selection.active
        layer = w.viewer.add_labels(labels, name=LIVE_PREVIEW_NAME, scale=scale, translate=translate, opacity=0.5,
                                    metadata={OWNED: "preview"})
        w.loop.live_ref = weakref.ref(layer)
        if active is not None:  # the user keeps painting where they were
            w.viewer.layers.selection.active = active
        return layer
    if not np.array_equal(layer.translate[-2:], translate):
        layer.translate = translate
    layer.data = labels
    return layer


def show_live_preview(w: Tower, image_ref: Any, labels: np.ndarray, offset: tuple[int, int], step: int) -> None:
    """Show a live preview's labels (GUI thread); a removed image drops it."""
    image_layer = image_ref()
    if image_layer is None or not any(image_layer is l for l in w.viewer.layers):
        return
    layer = preview_layer(w, image_layer, labels.astype(np.uint8), offset)  # uint8: napari maps it fastest
    w.loop.live_updates += 1
    layer.metadata["step"] = step



def save_round(w: Tower, labels_layer: Any, corrected: np.ndarray) -> None:
    """Keep the corrected labels of this retrain as a new version (before the retrain overwrites them)."""
    version = w.loop.history.save(corrected, "corrections before retraining", labels_layer.name)
    w.loop_panel.show_versions(w.loop.history.versions(), select=version.number)
