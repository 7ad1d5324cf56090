"""Block-wise prediction of volumes with a 3D model (issue 17): (z, y, x) blocks with a halo on all six faces.

Each volume of the image (`Image.volume`: planes ``v * Z .. (v + 1) * Z - 1``) is cut into blocks
whose cores tile it; a block reads its core plus a halo along z, y and x (clipped to the volume, and
grown inwards at the volume's edges to at least one 3D tile), is predicted with 3D tiling
(`Predictor.volume_probabilities`), turned into 3D labels (instances by the seeded watershed in 3D),
and writes only its core, chunk-aligned, into the (P, Y, X) label zarr (planes as in 2D, so a
napari Labels layer or `read_image` sees a z-stack).

Instance ids are made consistent across all six faces as in 2D: a block keeps, for each face it
shares with another block, its labels on the core's outermost slice and on the slice just beyond
(which lies in the neighbour's core); two blocks' objects that agree on those two slices
(IoU >= 0.5) are one object (`block_engine.final_ids`). Ids are sequential per volume.

Memory is one block's input, probabilities, labels and instance pass per worker, whatever the
volume's size: the default 32 x 384 x 384 core with its 16 x 32 x 32 halo reads 64 x 448 x 448
voxels (benchmarks/bench_blockwise3d.py and docs/benchmarks.md give the peak RSS); the instance pass
(watershed, relabelling) is most of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from itertools import pairwise, product
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Image, Normalisation
from ..data.lazy import read_region
from ..errors import TowerError
from .block_engine import LOCAL, Job, Layout, Summary, core_size, create_array, extent, label_dtype, resources
from .predict import Predictor, volume_size
from .tiling3d import tiling_3d

BLOCK_Z = 32  # default core slices of a block
MAX_BLOCK_YX = 384  # a 2D block side (4096 by default) is capped to this in 3D: voxels grow with z too
HALO = (16, 32, 32)  # default halo per axis (each capped by the 2D halo)

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class VolumeBlock:
    """One block of one volume: the core it writes and the extended region it reads, in volume coordinates."""

    volume: int
    layer: int
    row: int
    col: int
    core: tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1
    ext: tuple[int, int, int, int, int, int]


def volume_grid(shape: tuple[int, int, int], core: Triple, halo: Triple, min_extent: Triple = (0, 0, 0),
                volumes: int = 1) -> list[VolumeBlock]:
    """Blocks covering each of `volumes` (Z, Y, X) volumes once, in (volume, layer, row, col) order."""
    spans = [list(enumerate(pairwise([*range(0, n, c), n]))) for n, c in zip(shape, core)]
    blocks = []
    for v in range(volumes):
        for (i, (z0, z1)), (j, (y0, y1)), (k, (x0, x1)) in product(*spans):
            ext = extent(z0, z1, shape[0], halo[0], min_extent[0]) + extent(y0, y1, shape[1], halo[1], min_extent[1]) \
                + extent(x0, x1, shape[2], halo[2], min_extent[2])
            blocks.append(VolumeBlock(v, i, j, k, (z0, z1, y0, y1, x0, x1), ext))
    return blocks


def _triple(value: int | tuple[int, ...], name: str) -> Triple:
    out = (int(value),) * 3 if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(out) != 3:
        raise TowerError(f"{name} {value} is invalid: give one value or three (z, y, x)")
    return out  # type: ignore[return-value]


def _faces(labels: np.ndarray, block: VolumeBlock, shape: Triple) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per face shared with another block: (labels on the core's outer slice, labels one slice beyond it)."""
    core = [(a - e, b - e) for a, b, e in zip(block.core[::2], block.core[1::2], block.ext[::2])]
    inner = [slice(lo, hi) for lo, hi in core]
    seams = {}
    for axis, (low, high) in enumerate((("front", "back"), ("top", "bottom"), ("left", "right"))):
        lo, hi = core[axis]
        start, stop = block.core[2 * axis], block.core[2 * axis + 1]

        def face(at: int) -> np.ndarray:
            key = list(inner)
            key[axis] = at  # noqa: B023 - used at once, in this iteration
            return labels[tuple(key)].copy()

        if start > 0 and lo > 0:  # a face is only usable when the block has read beyond it (halo > 0)
            seams[low] = (face(lo), face(lo - 1))
        if stop < shape[axis] and hi < labels.shape[axis]:
            seams[high] = (face(hi - 1), face(hi))
    return seams


def _planes(job: Job, block: VolumeBlock, z0: int, z1: int) -> slice:
    z = volume_size(job.image)
    return slice(block.volume * z + z0, block.volume * z + z1)


def _core_key(job: Job, block: VolumeBlock) -> tuple[slice, slice, slice]:
    z0, z1, y0, y1, x0, x1 = block.core
    return _planes(job, block, z0, z1), slice(y0, y1), slice(x0, x1)


def _predict_block(job: Job, block: VolumeBlock) -> Summary | None:
    """Pass 1: predict one block with its halo in 3D and write its core (instance ids local to the block)."""
    predictor, out_labels, out_probs, out_local = resources(job)
    if out_local is not None:  # instances: pass 2 reads these ids and writes the final ones into labels
        out_labels = out_local
    ez0, ez1, ey0, ey1, ex0, ex1 = block.ext
    region = read_region(job.image.data, (_planes(job, block, ez0, ez1), slice(None), slice(ey0, ey1),
                                          slice(ex0, ex1)))
    probs = predictor.volume_probabilities(region, Normalisation.from_dict(job.norm))  # (z, K, y, x)
    del region
    labels = predictor.labels_from(np.moveaxis(probs, 1, 0))
    inner = tuple(slice(a - e, b - e) for a, b, e in zip(block.core[::2], block.core[1::2], block.ext[::2]))
    zs, ys, xs = _core_key(job, block)
    out_labels[zs, ys, xs] = labels[inner].astype(out_labels.dtype)
    if out_probs is not None:
        out_probs[zs, :, ys, xs] = probs[inner[0], :, inner[1], inner[2]]
    del probs
    if not job.instances:
        return None
    present = np.unique(labels[inner])
    z = volume_size(job.image)
    return Summary(block, int(labels.max()), present[present > 0].astype(np.int64),
                   _faces(labels, block, (z, *job.image.shape[2:])))


def _relabel_block(job: Job, block: VolumeBlock, lut: np.ndarray) -> None:
    """Pass 2: map a block's local ids to the final, seam-consistent ones."""
    _, out_labels, _, out_local = resources(job)
    key = _core_key(job, block)
    out_labels[key] = lut[np.asarray(out_local[key])]


def _create_outputs(tmp: Path, image: Image, predictor: Predictor, probabilities: bool, instances: bool, *,
                    chunks: Triple) -> tuple[tuple[int, ...], Any]:
    import zarr

    p, _, h, w = image.shape
    dtype = label_dtype(predictor, instances)
    root = zarr.open_group(str(tmp), mode="w")
    shape = (p, h, w)
    labels = create_array(root, "labels", shape, chunks, dtype)
    probs = local = None
    if probabilities:
        k = predictor.classes
        probs = create_array(root, "probabilities", (p, k, h, w), (chunks[0], k, *chunks[1:]), np.float32)
    if instances:
        local = create_array(root, LOCAL, shape, chunks, dtype)
    z = volume_size(image)
    root.attrs["napari_tower"] = {
        "source": image.source, "axes": "ZYX" if p == z else "PYX", "z_size": z, "dims": "3d",
        "target": predictor.target, "instances": instances, "classes": predictor.classes,
    }
    return shape, (labels, probs, local)


def _volume_of(b: VolumeBlock) -> int:
    return b.volume


def _position(b: VolumeBlock) -> tuple[int, int, int]:
    return (b.layer, b.row, b.col)


def volume_layout(predictor: Predictor, image: Image, block: int | tuple[int, ...] | None,
                  halo: int | tuple[int, ...] | None, chunk: int) -> Layout:
    """Blocks of the volumes of `image` for a 3D model, checked settings.

    `block` and `halo` are (z, y, x) triples, or one number: the 2D config's block side (capped at
    `MAX_BLOCK_YX` for y and x, `BLOCK_Z` slices) and halo (capped by `HALO` per axis). None: the defaults
    from the predictor's config, read that way.
    """
    cfg = predictor.cfg
    if block is None or isinstance(block, (int, np.integer)):
        side = min(int(block if block is not None else cfg.block), MAX_BLOCK_YX)
        block = (BLOCK_Z, side, side)
    if halo is None or isinstance(halo, (int, np.integer)):
        h = int(halo if halo is not None else cfg.halo)
        halo = tuple(min(h, cap) for cap in HALO)
    block3, halo3 = _triple(block, "block"), _triple(halo, "halo")
    if chunk < 16 or chunk % 16:
        raise TowerError(f"chunk {chunk} is invalid: use a multiple of 16 (e.g. 512)")
    if min(block3) < 1 or min(block3[1:]) < 64:
        raise TowerError(f"block {block3} is invalid: use at least 1 slice and 64 pixels (e.g. (32, 384, 384))")
    if min(halo3) < 0:
        raise TowerError(f"halo {halo3} is invalid: use 0 or more voxels (at least the largest object's diameter)")
    if cfg.instances and min(halo3) < 1:
        raise TowerError(f"halo {halo3} cannot join objects across block seams: use a halo of at least 1 voxel "
                         "per axis, better the largest object's diameter")
    chunk = min(chunk, block3[1] // 16 * 16, block3[2] // 16 * 16)
    z = volume_size(image)
    core = (min(block3[0], z), core_size(block3[1], chunk), core_size(block3[2], chunk))
    # Blocks never share an output chunk: z chunks are a core's slices (one slice where volumes would split them).
    chunks = (core[0] if z % core[0] == 0 or image.shape[0] == z else 1, chunk, chunk)
    tile, _ = tiling_3d(cfg.tile, cfg.overlap, predictor.model.unet.multiples)
    blocks = volume_grid((z, *image.shape[2:]), core, halo3, tile, int(image.shape[0]) // z)
    return Layout(
        blocks=blocks, settings={"block": list(block3), "halo": list(halo3), "chunk": chunk, "dims": "3d"},
        squeeze=False, create_outputs=partial(_create_outputs, chunks=chunks), predict=_predict_block,
        relabel=_relabel_block, group=_volume_of, position=_position,
        neighbours=(((1, 0, 0), "back", "front"), ((0, 1, 0), "bottom", "top"), ((0, 0, 1), "right", "left")))


__all__ = ["BLOCK_Z", "HALO", "MAX_BLOCK_YX", "VolumeBlock", "volume_grid", "volume_layout"]
