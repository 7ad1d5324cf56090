"""Voxel size and the 2D/3D choice of an image (issue 17), from file metadata, a layer's scale and its axes.

3D mode learns from volumes, and its U-Net pools z only while the voxels allow (`models.anisotropy`), so it
needs the voxel size (z, y, x): from ImageJ TIFF metadata (`spacing` and the X/YResolution tags), OME-XML
(PhysicalSizeZ/Y/X), OME-Zarr (the multiscale's `scale` transformations) or a napari layer's `scale` (given
here as numbers: this module never imports napari). Only the ratios matter, so units only have to agree.

`choose_dims` is the one rule for "auto": an image is a volume (3D) when it has a Z axis of at least
`MIN_VOLUME_SLICES` slices; a single plane, an RGB picture, a time series (T without Z) or a thin stack
stays 2D (every plane on its own). Every choice comes with the reason in words, shown to the user.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TowerError

# Fewer slices than this and a stack is read as 2D planes: a 3D U-Net needs some depth to convolve and pool
# along z, and a 16-slice training patch (DataConfig.patch_z) would be mostly padding.
MIN_VOLUME_SLICES = 8
ISOTROPIC = (1.0, 1.0, 1.0)
DIMS_CHOICES = ("auto", "2d", "3d")

# Lengths in micrometres, for OME/ImageJ/napari units (only ratios matter, so only differing units need it).
_MICRONS = {"pm": 1e-6, "å": 1e-4, "angstrom": 1e-4, "nm": 1e-3, "nanometer": 1e-3, "µm": 1.0, "μm": 1.0,
            "um": 1.0, "micron": 1.0, "micrometer": 1.0, "\\u00b5m": 1.0, "mm": 1e3, "millimeter": 1e3,
            "cm": 1e4, "m": 1e6, "meter": 1e6}
# Axis names napari layers or OME files use for time and depth (lower case).
_TIME_NAMES = {"t", "time", "frame", "frames", "timepoint", "timepoints"}
_DEPTH_NAMES = {"z", "depth", "slice", "slices", "plane", "planes", "focus"}


@dataclass(frozen=True)
class VoxelSize:
    """A voxel's (z, y, x) size and where it came from ("ImageJ metadata", "OME-XML", "layer scale", ...)."""

    zyx: tuple[float, float, float]
    source: str

    def describe(self) -> str:
        """E.g. "4 x 1 x 1 (z, y, x) from ImageJ metadata"."""
        return f"{' x '.join(_num(v) for v in self.zyx)} (z, y, x) from {self.source}"


@dataclass(frozen=True)
class DimsChoice:
    """2D planes or 3D volumes, and why (a sentence for the user)."""

    dims: str  # "2d" or "3d"
    reason: str


def _num(v: float) -> str:
    return f"{v:.4g}"


def _length(value: float, unit: str | None) -> float:
    """`value` in micrometres when `unit` is known, else unchanged (same-unit ratios stay right)."""
    return value * _MICRONS.get((unit or "").strip().lower(), 1.0)


def _voxel(z: Any, y: Any, x: Any, source: str) -> VoxelSize | None:
    """A VoxelSize when the three values are positive finite numbers, else None."""
    try:
        zyx = (float(z), float(y), float(x))
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) and v > 0 for v in zyx):
        return None
    return VoxelSize(zyx, source)


def parse_voxel_size(text: str | Sequence[str | float]) -> tuple[float, float, float]:
    """Three positive numbers z, y, x from "4 1 1", "4,1,1" or a sequence of them; ValueError otherwise."""
    parts = re.split(r"[,\s]+", text.strip()) if isinstance(text, str) else \
        [p for item in text for p in re.split(r"[,\s]+", str(item).strip())]
    values = [p for p in parts if p]
    if len(values) != 3:
        raise ValueError(f"voxel size needs 3 numbers z, y, x (e.g. 4 1 1 or 4,1,1), got {len(values)}")
    try:
        zyx = tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"voxel size '{' '.join(values)}' is invalid: give 3 numbers z, y, x, e.g. 4 1 1") from None
    if not all(math.isfinite(v) and v > 0 for v in zyx):
        raise ValueError(f"voxel size {' '.join(values)} is invalid: every value must be a positive number")
    return zyx  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- file metadata


def voxel_size_of_file(path: str | os.PathLike, level: int = 0) -> VoxelSize | None:
    """The voxel size a TIFF (OME-XML, ImageJ) or OME-Zarr declares, at pyramid `level`; None when it does not
    declare a z spacing (or cannot be read: reading the pixels reports that, not this)."""
    path = Path(path)
    try:
        suffix = path.suffix.lower()
        if suffix in (".tif", ".tiff"):
            return _tiff_voxel_size(path, level)
        if suffix == ".zarr":
            return _zarr_voxel_size(path, level)
    except Exception:  # noqa: BLE001 - metadata is optional: a damaged or odd header means "not declared"
        return None
    return None


def _tiff_voxel_size(path: Path, level: int) -> VoxelSize | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        # Only the first page's tags and the OME/ImageJ text: the series (every page of a plain multi-page
        # TIFF) is parsed only for a pyramid level's shape.
        found = None
        if tif.is_ome and tif.ome_metadata:
            found = _ome_xml_voxel_size(tif.ome_metadata)
        if found is None and tif.is_imagej:
            found = _imagej_voxel_size(tif.imagej_metadata or {}, tif.pages.first)
        if found is None or level == 0:
            return found
        series = tif.series[0]
        levels = getattr(series, "levels", None) or [series]
        if not 0 <= level < len(levels):
            return found
        return _at_level(found, series.axes, tuple(series.shape), tuple(levels[level].shape))


def _at_level(voxel: VoxelSize, axes: str, full: tuple[int, ...], shape: tuple[int, ...]) -> VoxelSize:
    """The voxel size of a coarser pyramid level: each axis grows by how much it shrank."""
    axes = axes.upper().replace("Q", "Z").replace("I", "Z")
    zyx = list(voxel.zyx)
    for i, a in enumerate("ZYX"):
        if a in axes and len(full) == len(shape) == len(axes):
            k = axes.index(a)
            zyx[i] *= full[k] / max(1, shape[k])
    return VoxelSize((zyx[0], zyx[1], zyx[2]), voxel.source)


def _ome_xml_voxel_size(xml: str) -> VoxelSize | None:
    """PhysicalSizeZ/Y/X (and their units) of the first Pixels element of OME-XML."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeZ") is None:
        return None
    sizes = []
    for a in "ZYX":
        value = pixels.get(f"PhysicalSize{a}")
        if value is None:
            return None
        sizes.append(_length(float(value), pixels.get(f"PhysicalSize{a}Unit", "µm")))
    return _voxel(*sizes, "OME-XML")


def _imagej_voxel_size(meta: Mapping[str, Any], page: Any) -> VoxelSize | None:
    """ImageJ's z `spacing` and the pixel size from the X/YResolution tags (pixels per unit)."""
    if "spacing" not in meta:
        return None
    sizes = []
    for tag in ("YResolution", "XResolution"):
        found = page.tags.get(tag)
        if found is None:
            return None
        num, den = found.value if isinstance(found.value, tuple) else (found.value, 1)
        sizes.append(den / num if num else float("nan"))
    return _voxel(meta["spacing"], sizes[0], sizes[1], "ImageJ metadata")


def _zarr_voxel_size(path: Path, level: int) -> VoxelSize | None:
    """The OME-Zarr multiscale's scale of dataset `level` (times a multiscale-wide scale) on z, y, x."""
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return None
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None
    ms = multiscales[0]
    axes = ms.get("axes") or []
    names = [(a.get("name", "") if isinstance(a, dict) else str(a)).lower() for a in axes]
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
    scale = _scale_of(ms["datasets"][level].get("coordinateTransformations"), len(names))
    overall = _scale_of(ms.get("coordinateTransformations"), len(names))
    if scale is None or "z" not in names:
        return None
    if overall is not None:
        scale = [s * o for s, o in zip(scale, overall)]
    sizes = [_length(scale[names.index(a)], units[names.index(a)]) for a in "zyx" if a in names]
    return _voxel(*sizes, "OME-Zarr metadata") if len(sizes) == 3 else None


def _scale_of(transforms: Any, ndim: int) -> list[float] | None:
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale" and len(t.get("scale") or []) == ndim:
            return [float(s) for s in t["scale"]]
    return None


# ----------------------------------------------------------------------------------------------- napari layers


def stack_axes(ndim: int, rgb: bool = False, axis_labels: Sequence[str] | None = None) -> tuple[str, bool]:
    """Axes letters of a layer's data (e.g. "ZYX", "TYX", "TZYX", "ZYXC" for RGB) and whether they were guessed.

    Named axes count (t, time, frame -> T; z, depth, slice -> Z); unnamed ones (napari's default '-3', ...)
    are guessed the way napari stacks them: the axis next to Y is Z, the ones before it T, A, B, D.
    Never C, so every non-spatial axis of a layer stays a plane axis (what napari shows as a slider).
    """
    spatial = ndim - (1 if rgb else 0)
    n_stack = max(0, spatial - 2)
    guess = list("ABDTZ"[len("ABDTZ") - n_stack:] if n_stack <= 5 else "Q" * n_stack)
    labels = [str(a).strip().lower() for a in axis_labels or ()][-spatial:] if axis_labels else []
    named = {i: "T" if name in _TIME_NAMES else "Z" for i, name in enumerate(labels[:n_stack])
             if len(labels) == spatial and (name in _TIME_NAMES or name in _DEPTH_NAMES)}
    if not named:
        return "".join(guess) + "YX" + ("C" if rgb else ""), True
    spare = iter(c for c in "ABDQ")
    letters = [named[i] if i in named else guess[i] if guess[i] not in named.values() else next(spare, "Q")
               for i in range(n_stack)]
    return "".join(letters) + "YX" + ("C" if rgb else ""), False


def voxel_size_from_scale(scale: Sequence[float], axes: str, units: Sequence[str] | None = None,
                          source: str = "the layer's scale") -> VoxelSize | None:
    """The (z, y, x) entries of a napari layer's `scale` (one per axis of `axes` without RGB), in `units`."""
    spatial = axes.replace("C", "")
    scale = [float(s) for s in scale]
    if "Z" not in spatial or len(scale) != len(spatial):
        return None
    unit_list = list(units) if units is not None and len(units) == len(scale) else [None] * len(scale)
    sizes = [_length(scale[spatial.index(a)], unit_list[spatial.index(a)]) for a in "ZYX"]
    return _voxel(*sizes, source)


# ----------------------------------------------------------------------------------------------- 2D or 3D


def choose_dims(axes: str, shape: Sequence[int], guessed: bool = False, voxel: VoxelSize | None = None
                ) -> DimsChoice:
    """The "auto" rule: 3D for a stack with a Z axis of at least MIN_VOLUME_SLICES slices (Z the innermost stack
    axis, as `Image.z_size` reads volumes), else 2D; with the reason. `guessed`: the axes were not declared."""
    axes = axes.upper()
    stack = [a for a in axes if a not in "CYXS"]
    rgb = bool(axes) and axes[-1] in "CS" and len(shape) == len(axes) and shape[-1] in (3, 4)
    if not stack:
        return DimsChoice("2d", "a single " + ("RGB " if rgb else "") + "plane: 2D")
    if "Z" not in stack:
        if "T" in stack:
            frames = shape[axes.index("T")] if len(shape) == len(axes) else "several"
            return DimsChoice("2d", f"a time series of {frames} frames without a Z axis: 2D, each frame on its own")
        return DimsChoice("2d", f"no Z axis (axes {axes}): 2D, every plane on its own")
    nz = int(shape[axes.index("Z")]) if len(shape) == len(axes) else 0
    if stack[-1] != "Z":
        return DimsChoice("2d", f"Z is not the innermost stack axis (axes {axes}): 2D, every plane on its own")
    if nz < MIN_VOLUME_SLICES:
        return DimsChoice("2d", f"only {nz} slice{'s' * (nz != 1)} along Z (3D needs at least {MIN_VOLUME_SLICES}): "
                                "2D, every plane on its own")
    volumes = int(math.prod(shape[axes.index(a)] for a in stack[:-1])) if len(shape) == len(axes) else 1
    times = f" in each of {volumes} volumes" if volumes > 1 else ""
    reason = f"{nz} slices along Z{times}: 3D volume"
    if voxel is not None and voxel.zyx[0] != voxel.zyx[2]:
        reason += f" (z spacing {_num(voxel.zyx[0] / voxel.zyx[2])} x the pixel size, from {voxel.source})"
    if guessed:
        reason += "; the axes were guessed as " + axes + ": if the stack is a time series, choose 2D"
    return DimsChoice("3d", reason)


def dims_of_image(image: Any) -> DimsChoice:
    """`choose_dims` for a `data.Image` (its declared or guessed axes, its Z size)."""
    axes = image.axes.upper()
    shape = [1] * len(axes)
    stack = [a for a in axes if a not in "CYXS"]
    if "Z" in stack:
        shape[axes.index("Z")] = max(1, int(image.z_size))
    for a in stack:
        if a != "Z":
            shape[axes.index(a)] = image.n_volumes if image.z_size > 1 else int(image.shape[0])
    if axes[-1:] in ("C", "S"):
        shape[-1] = image.channels
    return choose_dims(axes, shape, voxel=getattr(image, "voxels", None))


def resolve_dims(requested: str, image: Any) -> DimsChoice:
    """ "auto" -> `dims_of_image`; "2d"/"3d" as asked, refusing 3D for an image that holds no volume."""
    if requested == "auto":
        return dims_of_image(image)
    if requested == "2d":
        return DimsChoice("2d", "2D as asked (--dims 2d)")
    if requested != "3d":
        raise ValueError(f"dims must be one of {', '.join(DIMS_CHOICES)}, got {requested!r}")
    if image.z_size < 2:
        raise TowerError(f"{image.source} holds no volume (axes {image.axes}, no Z axis of several slices): "
                         "3D needs a z-stack; use --dims 2d or auto")
    return DimsChoice("3d", f"3D as asked (--dims 3d): {image.z_size} slices along Z")


__all__ = ["DIMS_CHOICES", "ISOTROPIC", "MIN_VOLUME_SLICES", "DimsChoice", "VoxelSize", "choose_dims",
           "dims_of_image", "parse_voxel_size", "resolve_dims", "stack_axes", "voxel_size_from_scale",
           "voxel_size_of_file"]
