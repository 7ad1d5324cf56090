"""Lazy (planes, channels, Y, X) views of arrays stored on disk in other axis orders.

A zarr array, a tifffile zarr store or an HDF5 dataset has no `transpose` or
`reshape`, and numpy would load it whole to do either. `AxesView` keeps the
stored array as it is and translates each (planes, channels, Y, X) index into
one read of the stored axes, so sampling a patch or predicting a block reads
only the chunks under it. We use it instead of wrapping in dask because a
direct read of a patch is 2-3x faster than building and computing a dask
graph for it, and training reads thousands of patches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import TowerError

_CHANNEL_LETTERS = "CS"


def _as_slice(key: Any, length: int) -> tuple[slice, bool]:
    """An int or slice index on one axis as a slice, and whether the axis is dropped (int index)."""
    if isinstance(key, slice):
        return key, False
    if isinstance(key, (int, np.integer)):
        k = int(key)
        if not -length <= k < length:
            raise IndexError(f"index {k} is out of bounds for an axis of size {length}")
        k %= length
        return slice(k, k + 1), True
    raise TypeError(f"only integers and slices index channels, Y and X of a lazy image, not {type(key).__name__}")


class AxesView:
    """A read-only (planes, channels, Y, X) view of `base`, whose axes are named by `axes` (e.g. "TCZYX").

    All axes other than C/S, Y and X fold into planes (C order, like `reshape`).
    Indexing returns numpy arrays and reads only the indexed region of `base`;
    `np.asarray(view)` reads everything.
    """

    def __init__(self, base: Any, axes: str, planes: Any = None) -> None:
        axes = axes.upper()
        if len(axes) != len(base.shape):
            raise TowerError(f"axes '{axes}' do not match an array with {len(base.shape)} dimensions")
        if "Y" not in axes or "X" not in axes:
            raise TowerError(f"axes '{axes}' lack Y and X: the image must have two spatial axes")
        channel_axes = [i for i, a in enumerate(axes) if a in _CHANNEL_LETTERS]
        if len(channel_axes) > 1:
            raise TowerError(f"axes '{axes}' have more than one channel axis: merge them into one (C)")
        self.base = base
        self.axes = axes
        self._plane_axes = [i for i, a in enumerate(axes) if a not in _CHANNEL_LETTERS + "YX"]
        self._channel_axis = channel_axes[0] if channel_axes else None
        self._y, self._x = axes.index("Y"), axes.index("X")
        self._plane_shape = tuple(int(base.shape[i]) for i in self._plane_axes)
        n_planes = int(np.prod(self._plane_shape)) if self._plane_shape else 1
        self._planes = np.arange(n_planes) if planes is None else np.asarray(planes, dtype=np.int64)
        channels = int(base.shape[self._channel_axis]) if self._channel_axis is not None else 1
        self.shape = (len(self._planes), channels, int(base.shape[self._y]), int(base.shape[self._x]))
        self.dtype = np.dtype(base.dtype)
        self.ndim = 4

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """The stored chunk shape in (planes, channels, Y, X) order, where the base has chunks."""
        chunks = getattr(self.base, "chunks", None)
        if chunks is None or not isinstance(chunks, tuple) or not all(isinstance(c, (int, np.integer)) for c in chunks):
            return None
        channel = int(chunks[self._channel_axis]) if self._channel_axis is not None else 1
        return (1, channel, int(chunks[self._y]), int(chunks[self._x]))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"AxesView({type(self.base).__name__} {tuple(self.base.shape)} '{self.axes}' -> {self.shape})"

    def select_planes(self, planes: Any) -> AxesView:
        """A view of some planes only (indices into this view's planes), still lazy."""
        return AxesView(self.base, self.axes, self._planes[np.asarray(planes, dtype=np.int64)])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:at] + (slice(None),) * (4 - len(key) + 1) + key[at + 1:]
        if len(key) > 4:
            raise IndexError(f"too many indices ({len(key)}) for a (planes, channels, Y, X) image")
        key = key + (slice(None),) * (4 - len(key))
        plane_key, channel_key, y_key, x_key = key
        if isinstance(plane_key, (int, np.integer)):
            if not -len(self._planes) <= int(plane_key) < len(self._planes):
                raise IndexError(f"plane {int(plane_key)} is out of bounds for {len(self._planes)} plane(s)")
            planes, drop_plane = [int(self._planes[int(plane_key)])], True
        else:
            planes, drop_plane = self._planes[plane_key].tolist(), False
        channel_slice, drop_channel = _as_slice(channel_key, self.shape[1])
        y_slice, drop_y = _as_slice(y_key, self.shape[2])
        x_slice, drop_x = _as_slice(x_key, self.shape[3])
        if self._one_run(planes):  # consecutive planes along one stored axis (a z range): one read, not one per plane
            reads = list(self._read_run(planes[0], len(planes), channel_slice, y_slice, x_slice))
        else:
            reads = [self._read_plane(p, channel_slice, y_slice, x_slice) for p in planes]
        if reads:
            out = np.stack(reads)
        else:
            empty = np.empty(self.shape[1:], self.dtype)[channel_slice, y_slice, x_slice]
            out = empty[None][:0]
        drop = [i for i, d in enumerate((drop_plane, drop_channel, drop_y, drop_x)) if d]
        return out.squeeze(axis=tuple(drop)) if drop else out

    def _one_run(self, planes: list[int]) -> bool:
        """Whether `planes` are 2+ consecutive planes that differ only in the last stored plane axis."""
        if len(planes) < 2 or not self._plane_shape or planes != list(range(planes[0], planes[0] + len(planes))):
            return False
        last = self._plane_shape[-1]
        return planes[0] // last == planes[-1] // last

    def _read_run(self, first: int, count: int, channels: slice, ys: slice, xs: slice) -> np.ndarray:
        """(count, C, Y, X) of consecutive planes: one read of the base array (a chunked 3D zarr decodes each
        chunk once, not once per plane)."""
        index: list[Any] = [slice(None)] * len(self.base.shape)
        at = np.unravel_index(first, self._plane_shape)
        for axis, i in zip(self._plane_axes[:-1], at[:-1]):
            index[axis] = int(i)
        run_axis = self._plane_axes[-1]
        index[run_axis] = slice(int(at[-1]), int(at[-1]) + count)
        index[self._y], index[self._x] = ys, xs
        if self._channel_axis is not None:
            index[self._channel_axis] = channels
        data = np.asarray(self.base[tuple(index)])
        kept = [a for a in range(len(self.base.shape)) if a not in self._plane_axes[:-1]]
        order = [kept.index(run_axis)] + ([kept.index(self._channel_axis)] if self._channel_axis is not None else []) \
            + [kept.index(self._y), kept.index(self._x)]
        data = data.transpose(order)
        if self._channel_axis is None:
            data = data[:, None][:, channels]
        return data

    def _read_plane(self, plane: int, channels: slice, ys: slice, xs: slice) -> np.ndarray:
        """(C, Y, X) of one plane: a single read of the base array, then axes put in order."""
        index: list[Any] = [slice(None)] * len(self.base.shape)
        if self._plane_shape:
            for axis, i in zip(self._plane_axes, np.unravel_index(plane, self._plane_shape)):
                index[axis] = int(i)
        index[self._y], index[self._x] = ys, xs
        if self._channel_axis is not None:
            index[self._channel_axis] = channels
        data = np.asarray(self.base[tuple(index)])
        kept = [a for a in range(len(self.base.shape)) if a not in self._plane_axes]  # base order of what remains
        order = ([kept.index(self._channel_axis)] if self._channel_axis is not None else []) + \
            [kept.index(self._y), kept.index(self._x)]
        data = data.transpose(order)
        if self._channel_axis is None:
            data = data[None][channels]
        return data


def is_lazy(data: Any) -> bool:
    """True for arrays that live on disk or in a task graph (zarr, dask, memmap, AxesView), not in memory."""
    return isinstance(data, (AxesView, np.memmap)) or (not isinstance(data, np.ndarray) and hasattr(data, "shape"))


def read_region(data: Any, key: Any) -> np.ndarray:
    """`data[key]` as a numpy array; dask arrays compute in this thread (no nested thread pools in workers)."""
    part = data[key]
    if hasattr(part, "compute") and hasattr(part, "dask"):
        return np.asarray(part.compute(scheduler="synchronous"))
    return np.asarray(part)
