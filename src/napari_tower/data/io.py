"""Reading images from disk into arrays with known axes.

Every reader returns an `Image`: an array-like (numpy, zarr or memory-mapped)
in (planes, channels, Y, X) order plus where it came from. Z and T planes are
independent 2D samples for training, so both fold into one `planes` axis.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TowerError
from .guards import check_tiff_series
from .lazy import AxesView
from .voxels import VoxelSize, voxel_size_of_file

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".zarr")


@dataclass
class Image:
    """An image as (planes, channels, Y, X) and the axes it was read with."""

    data: Any  # array-like of shape (P, C, Y, X)
    source: str
    axes: str  # original axes, e.g. "ZYX", "YXC"
    # Slices per volume: planes z*k .. z*(k+1)-1 are volume k (Z is the fastest plane axis after
    # T; 1 for a 2D image). What 3D mode (issue 17) reads volumes by; 2D ignores it.
    z_size: int = 1
    # The voxel size the file declares (data.voxels.VoxelSize), None when it declares none (issue 17).
    voxels: VoxelSize | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def channels(self) -> int:
        return int(self.data.shape[1])

    @property
    def n_volumes(self) -> int:
        """How many (Z, C, Y, X) volumes the planes hold (T time points, or 1)."""
        return max(1, int(self.data.shape[0]) // max(1, self.z_size))

    def volume(self, index: int) -> Any:
        """Volume `index` as (Z, C, Y, X), sliced (not read) from the planes."""
        z = max(1, self.z_size)
        return self.data[index * z:(index + 1) * z]

    def select_planes(self, planes: Sequence[int]) -> Image:
        """The listed planes as an `Image`; nothing is read for data on disk or in dask."""
        idx = [int(p) for p in planes]
        if isinstance(self.data, AxesView):
            data = self.data.select_planes(idx)
        elif idx and idx == list(range(idx[0], idx[-1] + 1)):
            data = self.data[idx[0]: idx[-1] + 1]  # a view, not a copy, for numpy
        else:
            data = self.data[idx]
        z = self.z_size if idx == list(range(int(self.data.shape[0]))) else 1
        return Image(data, self.source, self.axes, z, self.voxels)


def guess_axes(shape: Sequence[int], rgb: bool | None = None) -> str:
    """Axes for an array of this shape, the way napari would show it.

    A trailing axis of 3 or 4 is read as RGB(A)/channels when `rgb` is not False.
    """
    nd = len(shape)
    trailing_rgb = shape[-1] in (3, 4) if rgb is None else rgb
    if nd == 2:
        return "YX"
    if nd == 3:
        return "YXC" if trailing_rgb else "ZYX"
    if nd == 4:
        if trailing_rgb:
            return "ZYXC"
        if shape[1] <= 8 < min(shape[2], shape[3]):
            return "ZCYX"  # ImageJ hyperstack order
        return "TZYX"
    if nd == 5:
        return "TZYXC" if trailing_rgb else "TZCYX"
    raise TowerError(
        f"an array with {nd} dimension(s) {tuple(shape)} cannot be read as an image: "
        "give a 2D image, a 2D+channel image, or a stack of 2D planes (up to 5 dimensions)"
    )


def to_pcyx(array: Any, axes: str) -> Any:
    """Reorder an array with `axes` into (planes, channels, Y, X), folding Z/T into planes."""
    axes = axes.upper()
    if len(axes) != array.ndim:
        raise TowerError(f"axes '{axes}' do not match an array with {array.ndim} dimensions")
    if "Y" not in axes or "X" not in axes:
        raise TowerError(f"axes '{axes}' lack Y and X: the image must have two spatial axes")
    plane_axes = [i for i, a in enumerate(axes) if a not in "CYXS"]
    chan = [i for i, a in enumerate(axes) if a in "CS"]
    order = plane_axes + chan + [axes.index("Y"), axes.index("X")]
    arr = array.transpose(order) if hasattr(array, "transpose") else np.transpose(array, order)
    shape = arr.shape
    n_planes = int(np.prod(shape[: len(plane_axes)])) if plane_axes else 1
    n_chan = int(np.prod(shape[len(plane_axes): len(plane_axes) + len(chan)])) if chan else 1
    return arr.reshape(n_planes, n_chan, shape[-2], shape[-1])


def check_array(array: Any, source: str) -> None:
    """Reject arrays no model can learn from, with a message that says why."""
    if array.size == 0 or min(array.shape) == 0:
        raise TowerError(f"{source} is empty (shape {tuple(array.shape)}): give an image with pixels")
    if array.dtype.kind not in "biuf":
        raise TowerError(f"{source} has data type {array.dtype}, not numbers: convert it to an integer or float image")


def from_array(array: Any, source: str = "array", axes: str | None = None, rgb: bool | None = None) -> Image:
    """Wrap an in-memory or lazy array (numpy, memmap, zarr, dask) as an `Image`, without reading a lazy one.

    numpy and dask arrays are reordered with their own transpose/reshape (views,
    or a lazy graph); arrays on disk (zarr, memory-mapped files, HDF5) get an
    `AxesView`, which reads only what is indexed.
    """
    if not hasattr(array, "shape"):
        array = np.asarray(array)
    check_array(array, source)
    axes = (axes or guess_axes(array.shape, rgb)).upper()
    in_memory = type(array) is np.ndarray or (hasattr(array, "dask") and hasattr(array, "compute"))
    if in_memory or sum(a in "CS" for a in axes) > 1:
        if not in_memory:
            import dask.array as da

            array = da.from_array(array, chunks=getattr(array, "chunks", None) or "auto")
        return Image(to_pcyx(array, axes), source, axes, _z_size(array.shape, axes))
    return Image(AxesView(array, axes), source, axes, _z_size(array.shape, axes))


def _z_size(shape: Sequence[int], axes: str) -> int:
    """The Z axis's length, when Z is the last plane axis (the usual TZ... order); else 1."""
    plane_axes = [a for a in axes if a not in "CYXS"]
    if not plane_axes or plane_axes[-1] != "Z":
        return 1
    return int(shape[axes.index("Z")])


# TIFFs that decode to more than this are read lazily (tile by tile) when they cannot be memory-mapped.
EAGER_TIFF_BYTES = 256 * 2**20


def _read_tiff(path: Path, level: int = 0) -> tuple[Any, str | None]:
    """A TIFF's first series (pyramid `level`): memory-mapped when uncompressed, else decoded, lazily when large."""
    import tifffile

    tif = tifffile.TiffFile(path)
    keep_open = False
    try:
        if not tif.series:
            raise TowerError(f"{path} holds no image data: check the file is a TIFF image")
        series = tif.series[0]
        levels = getattr(series, "levels", None) or [series]
        if not 0 <= level < len(levels):
            raise TowerError(f"{path} has {len(levels)} resolution level(s): choose --level 0..{len(levels) - 1}")
        series = levels[level]
        check_tiff_series(path, series)  # before anything is allocated: a header can claim terabytes
        axes = series.axes.upper().replace("Q", "Z").replace("I", "Z")
        nbytes = int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize
        data: Any = None
        if level == 0 and getattr(series, "dataoffset", None) is not None:
            try:
                data = tifffile.memmap(path, mode="r")
            except (ValueError, OSError):
                data = None
            if data is not None and tuple(data.shape) != tuple(series.shape):
                data = None
        if data is None and (nbytes > EAGER_TIFF_BYTES or level > 0):
            import zarr

            # The store decodes tiles/strips on demand and needs the file kept open.
            data = zarr.open(series.aszarr(), mode="r")
            keep_open = True
        if data is None:
            data = series.asarray()
    finally:
        if not keep_open:
            tif.close()
    if any(a not in "TZCYXS" for a in axes) or len(axes) != data.ndim:
        axes = None
    if axes == "YXS" and data.shape[-1] not in (3, 4):
        axes = "YXC"
    return data, axes


_OME_AXES = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}


def _ome_axes(multiscale: dict[str, Any]) -> str | None:
    """Axes letters from OME-NGFF multiscale metadata (v0.3 names or v0.4+ dicts); unknown axes become planes."""
    names = multiscale.get("axes")
    if not names:
        return None
    names = [a.get("name", "") if isinstance(a, dict) else str(a) for a in names]
    return "".join(_OME_AXES.get(n.lower(), "Q") for n in names)


def _read_zarr(path: Path, level: int = 0) -> tuple[Any, str | None]:
    """A zarr array (v2 or v3), or resolution `level` of an OME-Zarr multiscale group, unread."""
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        if level != 0:
            raise TowerError(f"{path} is a single zarr array with one resolution: use --level 0")
        return node, None
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales:
        datasets = multiscales[0]["datasets"]
        if not 0 <= level < len(datasets):
            raise TowerError(f"{path} has {len(datasets)} resolution level(s): choose --level 0..{len(datasets) - 1}")
        return node[datasets[level]["path"]], _ome_axes(multiscales[0])
    arrays = [name for name, _ in node.arrays()] if hasattr(node, "arrays") else []
    if arrays:
        return node[sorted(arrays)[0]], None
    raise TowerError(f"{path} is a zarr group with no array: point to the array inside it")


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence a library's log messages for a moment (errors still reach the user as a TowerError)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 10)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_raw(path: Path, level: int = 0) -> tuple[Any, str | None]:
    """The array in a file and the axes the file declares (TIFF, OME-Zarr), without reordering or loading."""
    if not path.exists():
        raise TowerError(f"{path} does not exist: check the path")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise TowerError(f"{path} is not a supported image ({', '.join(IMAGE_SUFFIXES)}): convert it to TIFF")
    file_axes: str | None = None
    try:
        if suffix in (".tif", ".tiff"):
            with _quiet_logger("tifffile"):  # it logs each damaged page; the one error below is enough
                data, file_axes = _read_tiff(path, level)
        elif suffix == ".npy":
            data = np.load(path, allow_pickle=False, mmap_mode="r")
        elif suffix == ".zarr":
            data, file_axes = _read_zarr(path, level)
        else:
            import imageio.v3 as iio

            data = iio.imread(path)
    except TowerError:
        raise
    except PermissionError as exc:
        raise TowerError(f"{path} cannot be read ({exc.strerror}): check the file's permissions (chmod +r) "
                         "or copy it to a folder you can read") from None
    except MemoryError:
        raise TowerError(f"{path} needs more memory than is free to be read: save it as a tiled TIFF or zarr, "
                         "which are read piece by piece") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file can make any parser fail in any way: one clear line
        if type(exc).__name__ == "DecompressionBombError":  # PIL's guard against huge declared sizes
            raise TowerError(f"{path} was not read: {exc} (a damaged header or a decompression bomb); save large "
                             "images as tiled TIFF or zarr") from None
        raise TowerError(
            f"{path} could not be read ({type(exc).__name__}: {str(exc)[:120]}): "
            "the file may be truncated or not an image"
        ) from None
    check_array(data, str(path))
    return data, file_axes


def read_image(path: str | os.PathLike, axes: str | None = None, level: int = 0) -> Image:
    """Open one image file (TIFF, PNG/JPEG, NPY, zarr) as (planes, channels, Y, X).

    Zarr, uncompressed TIFF and NPY stay on disk (only what is indexed is read);
    large compressed TIFFs are decoded tile by tile. `level` picks a resolution
    of an OME-Zarr multiscale group or a pyramidal TIFF (0 = full resolution).
    The voxel size the file declares (TIFF/OME metadata) is in `Image.voxels`.
    """
    path = Path(path)
    if level < 0:
        raise TowerError(f"level {level} is invalid: use 0 for full resolution, 1, 2, ... for coarser ones")
    data, file_axes = _read_raw(path, level)
    image = from_array(data, str(path), axes or file_axes)
    image.voxels = voxel_size_of_file(path, level)
    return image


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label image as (planes, Y, X) integers; a trailing axis of 3 is a plane axis here, not RGB."""
    path = Path(path)
    data, file_axes = _read_raw(path)
    no_channel_axis = file_axes and "C" not in file_axes and "S" not in file_axes
    axes = file_axes if no_channel_axis else guess_axes(data.shape, rgb=False)
    arr = np.asarray(to_pcyx(np.asarray(data), axes))
    if arr.shape[1] != 1:
        raise TowerError(f"{path} has {arr.shape[1]} channels: labels must be a single-channel integer image")
    return labels_as_int(arr[:, 0], str(path))


def labels_as_int(labels: np.ndarray, source: str) -> np.ndarray:
    """Labels as int64, refusing negative, fractional or non-finite values."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and (not np.isfinite(labels).all() or (labels != np.round(labels)).any()):
        raise TowerError(f"{source} holds fractional or NaN values: labels must be whole numbers (0 = background)")
    if labels.dtype.kind not in "biuf":
        raise TowerError(f"{source} has data type {labels.dtype}: labels must be integers")
    if labels.dtype.kind in "uf" and labels.size and labels.max() > np.iinfo(np.int64).max:
        raise TowerError(f"{source} has label ids up to {labels.max()}, beyond 2^63 - 1: relabel the objects "
                         "sequentially (e.g. skimage.segmentation.relabel_sequential)")
    out = labels.astype(np.int64)
    if out.min() < 0:
        raise TowerError(f"{source} has negative labels: use 0 for background and positive ids for objects")
    return out


def expand_inputs(items: Sequence[str]) -> list[Path]:
    """Turn files, folders and globs into a sorted list of image paths."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir() and p.suffix.lower() != ".zarr":
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise TowerError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif p.exists():
            paths.append(p)
        elif any(ch in item for ch in "*?["):
            found = sorted(Path(q) for q in glob.glob(item))
            if not found:
                raise TowerError(f"the pattern {item} matches no files")
            paths.extend(found)
        else:
            raise TowerError(f"{item} does not exist: check the path")
    return paths


def write_tiff(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a TIFF atomically (`atomic.atomic_write`), so a crash or a full disk never leaves half a file."""
    import tifffile

    from ..atomic import atomic_write

    with atomic_write(path) as fh:
        tifffile.imwrite(fh, np.asarray(array), compression="zlib")
