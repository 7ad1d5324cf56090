"""Turning napari layers into core arrays and back, and the policy for writing results (no Qt; layers are
duck-typed).

An image layer becomes an `Image` (planes, channels, Y, X): napari shows every
axis but Y, X (and RGB) as a slider, so all other axes are planes. Labels and
probabilities for it have the layer's shape without the RGB axis.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data import Image, from_array, labels_as_int
from ..errors import TowerError

_PLANE_LETTERS = "ABDTZ"  # never C, S, Y or X, so to_pcyx folds them into planes


def layer_axes(layer: Any) -> str:
    """Axes of a layer's data the way napari displays it, e.g. 'YX', 'ZYX', 'TZYX', 'ZYXC' for RGB."""
    rgb = bool(getattr(layer, "rgb", False))
    ndim = np.ndim(layer.data) if not hasattr(layer.data, "ndim") else layer.data.ndim
    spatial = ndim - (1 if rgb else 0)
    if spatial < 2:
        raise TowerError(f"layer '{layer.name}' has {ndim} dimension(s): an image needs at least Y and X")
    if spatial - 2 > len(_PLANE_LETTERS):
        raise TowerError(f"layer '{layer.name}' has {ndim} dimensions: at most {len(_PLANE_LETTERS) + 2} are supported")
    return _PLANE_LETTERS[len(_PLANE_LETTERS) - (spatial - 2):] + "YX" + ("C" if rgb else "")


def image_from_layer(layer: Any) -> Image:
    """The core `Image` view of an image layer (no copy for numpy, lazy for dask/zarr)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return from_array(data, layer.name, axes=layer_axes(layer), rgb=bool(getattr(layer, "rgb", False)))


def label_shape(layer: Any) -> tuple[int, ...]:
    """Shape of a Labels layer that matches an image layer pixel for pixel."""
    shape = tuple(int(s) for s in (layer.data[0] if getattr(layer, "multiscale", False) else layer.data).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def labels_to_planes(labels_layer: Any, image_layer: Any) -> np.ndarray:
    """A copy of a Labels layer's data as (planes, Y, X) int64, checked against the image's shape."""
    want = label_shape(image_layer)
    data = labels_layer.data[0] if getattr(labels_layer, "multiscale", False) else labels_layer.data
    if tuple(data.shape) != want:
        raise TowerError(
            f"labels layer '{labels_layer.name}' has shape {tuple(data.shape)} but image layer '{image_layer.name}' "
            f"needs {want}: choose the labels painted on that image (or add a new Labels layer over it)"
        )
    # labels_as_int copies, so later painting does not change what a job trains on.
    return labels_as_int(np.asarray(data).reshape((-1,) + want[-2:]), f"labels layer '{labels_layer.name}'")


def current_plane(layer: Any, world_point: Any) -> int:
    """Index (into the Image's planes axis) of the plane the viewer shows at `world_point`."""
    shape = label_shape(layer)
    if len(shape) == 2:
        return 0
    pos = np.asarray(layer.world_to_data(world_point), float)[: len(shape) - 2]
    idx = [int(np.clip(np.round(p), 0, s - 1)) for p, s in zip(pos, shape[:-2])]
    return int(np.ravel_multi_index(idx, shape[:-2]))


def fingerprint(data: Any) -> tuple:
    """A cheap identity of an array's content: shape, dtype, object id and a CRC of a strided sample."""
    import zlib

    if isinstance(data, list):  # multiscale
        data = data[0]
    shape = tuple(int(s) for s in data.shape)
    index = tuple(slice(None, None, max(1, s // 32)) for s in shape)
    sample = np.ascontiguousarray(np.asarray(data[index]))
    return shape, str(data.dtype), id(data), zlib.crc32(sample.tobytes())


# ------------------------------------------------------------------------------------------------ writing results


def in_layers(layer: Any, layers: Any) -> bool:
    """Whether `layer` (may be None) is one of `layers` (identity, not equality)."""
    return layer is not None and any(layer is other for other in layers)


def reusable(layer: Any, layers: Any, shape: tuple[int, ...], expected: np.ndarray | None = None) -> bool:
    """The widget's one policy for writing a result: replace the layer unless the user edited it.

    A layer the widget wrote before gets the new data only while it is still in the viewer, has the
    new data's shape and, when `expected` (what it held after the last write) is given, still holds it.
    Otherwise the result goes into a new layer and the old one, with the user's edits, is left alone.
    """
    if not in_layers(layer, layers) or tuple(layer.data.shape) != tuple(shape):
        return False
    return expected is None or np.array_equal(np.asarray(layer.data).reshape(np.shape(expected)), expected)


class WrittenLayers:
    """The layers the widget wrote, by key (an image layer's id, a preview's name), and what it wrote.

    `write` applies `reusable`: with `check_edits`, a layer whose content is no longer what was written
    there (the user painted on it) is never replaced; with `drop_old`, an old layer that cannot take the
    new data (removed, other shape) is removed rather than kept (previews, which nobody edits).
    """

    def __init__(self) -> None:
        self._items: dict[Any, tuple[Any, np.ndarray | None]] = {}

    def layer(self, key: Any, layers: Any) -> Any | None:
        """The layer last written for `key`, while it is still in `layers`."""
        ref, _ = self._items.get(key, (None, None))
        layer = ref() if ref is not None else None
        return layer if in_layers(layer, layers) else None

    def keys(self) -> list[Any]:
        return list(self._items)

    def remove(self, key: Any, layers: Any) -> None:
        """Remove the layer written for `key` from `layers` (if there) and forget it."""
        layer = self.layer(key, layers)
        if layer is not None:
            layers.remove(layer)
        self._items.pop(key, None)

    def write(self, key: Any, layers: Any, data: np.ndarray, add: Callable[[np.ndarray], Any],
              check_edits: bool = True, drop_old: bool = False) -> tuple[Any, bool]:
        """Put `data` into the layer written for `key` if `reusable`, else into `add(data)`; (layer, reused)."""
        ref, before = self._items.get(key, (None, None))
        old = ref() if ref is not None else None
        if reusable(old, layers, data.shape, before if check_edits else None):
            old.data = data
            layer, reused = old, True
        else:
            if drop_old and in_layers(old, layers):
                layers.remove(old)
            layer, reused = add(data), False
        self._items[key] = (weakref.ref(layer), data.copy() if check_edits else None)
        return layer, reused


def view_crop(viewer: Any, layer: Any, yx: tuple[int, int], most: int = 1024) -> tuple[int, int, tuple[int, int]]:
    """Top-left corner and size of the (at most `most` square) region around the view's centre."""
    h, wd = yx
    ch, cw = min(h, most), min(wd, most)
    if (ch, cw) == (h, wd):
        return 0, 0, (h, wd)
    point = list(viewer.dims.point)
    for axis, c in zip(viewer.dims.displayed[-2:], viewer.camera.center[-2:]):
        point[axis] = c
    cy, cx = np.asarray(layer.world_to_data(point), float)[-2:]
    y0 = int(np.clip(cy - ch / 2, 0, h - ch))
    x0 = int(np.clip(cx - cw / 2, 0, wd - cw))
    return y0, x0, (ch, cw)
