"""Turning napari layers into core arrays and back (no Qt; layers are duck-typed).

An image layer becomes an `Image` (planes, channels, Y, X): napari shows every
axis but Y, X (and RGB) as a slider, so all other axes are planes. Labels and
probabilities for it have the layer's shape without the RGB axis.
"""

from __future__ import annotations

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
    if getattr(layer, "multiscale", False):
        data = layer.data[0]
    else:
        data = layer.data
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
