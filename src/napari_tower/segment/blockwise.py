"""Block-wise (out-of-core) prediction: an image of any size in, a chunked zarr out, in bounded memory.

The image is cut into blocks (one plane at a time). Each block is read with a
`halo` of context on every side that faces another block, predicted with the
tiled `Predictor`, turned into labels, and only its core is written to the
output zarr, chunk-aligned, so blocks never write the same chunk and can run
in any order, in threads or on a `dask.distributed` cluster.

Instance ids are made consistent across block seams in a second pass. A
block's halo reaches into its neighbours' cores, so along each seam both
blocks have labelled the two rows either side of it. An object of block A and
an object of block B are one object when A's and B's labels of those seam
pixels agree (IoU >= 0.5 on the seam); agreeing pairs are joined with a
union-find (connected components), ids are made sequential per plane in
raster order, and every block's core is relabelled through a lookup table.
The seam labels are right as long as the halo holds the objects that cross
a seam whole: use a halo of at least the largest object's diameter.

Memory is about one block's probabilities, labels and watershed per worker
(~0.6 GB for the default 4096 px blocks), whatever the image size.

A 3D model predicts volumes in (z, y, x) blocks instead (`blockwise3d`), with
seams on six faces; both run through `block_engine.run_blocks` (journal,
runners, the two passes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Image, Normalisation
from ..data.lazy import read_region
from ..errors import TowerError
from .block_engine import (
    LOCAL,
    BlockwiseResult,
    Job,
    Layout,
    Summary,
    check_target,
    core_size,
    create_array,
    extent,
    label_dtype,
    resources,
    run_blocks,
)
from .blockwise3d import volume_layout
from .predict import Predictor

DEFAULT_CHUNK = 512


@dataclass(frozen=True)
class Block:
    """One block of one plane: the core it writes and the extended region (core + halo) it reads."""

    plane: int
    row: int
    col: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1
    ext: tuple[int, int, int, int]


def block_grid(shape: tuple[int, int, int, int], core: int, halo: int, min_extent: int = 0) -> list[Block]:
    """Blocks covering every plane of a (P, C, Y, X) image, in (plane, row, col) order.

    Each block reads its core plus `halo` on every side, and at least `min_extent` pixels per
    axis (the tile size), growing inwards at the image edges.
    """
    p, _, h, w = shape
    ys = list(range(0, h, core)) + [h]
    xs = list(range(0, w, core)) + [w]
    blocks = []
    for pi in range(p):
        for r, (y0, y1) in enumerate(pairwise(ys)):
            for c, (x0, x1) in enumerate(pairwise(xs)):
                ext = extent(y0, y1, h, halo, min_extent) + extent(x0, x1, w, halo, min_extent)
                blocks.append(Block(pi, r, c, (y0, y1, x0, x1), ext))
    return blocks


def _out_key(job: Job, plane: int, ys: slice, xs: slice, channels: bool = False) -> tuple:
    lead: tuple = () if job.squeeze else (plane,)
    return lead + ((slice(None),) if channels else ()) + (ys, xs)


def _seams(labels: np.ndarray, block: Block, shape: tuple[int, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per side facing another block: (labels on the core's edge, labels one pixel beyond it), in ext coordinates."""
    (y0, y1, x0, x1), (ey0, _, ex0, _) = block.core, block.ext
    h, w = shape
    ry0, ry1, rx0, rx1 = y0 - ey0, y1 - ey0, x0 - ex0, x1 - ex0
    seams = {}
    # A side is only usable when the block has read beyond it (halo > 0).
    if y0 > 0 and ry0 > 0:
        seams["top"] = (labels[ry0, rx0:rx1].copy(), labels[ry0 - 1, rx0:rx1].copy())
    if y1 < h and ry1 < labels.shape[0]:
        seams["bottom"] = (labels[ry1 - 1, rx0:rx1].copy(), labels[ry1, rx0:rx1].copy())
    if x0 > 0 and rx0 > 0:
        seams["left"] = (labels[ry0:ry1, rx0].copy(), labels[ry0:ry1, rx0 - 1].copy())
    if x1 < w and rx1 < labels.shape[1]:
        seams["right"] = (labels[ry0:ry1, rx1 - 1].copy(), labels[ry0:ry1, rx1].copy())
    return seams


def _predict_block(job: Job, block: Block) -> Summary | None:
    """Pass 1: predict one block with its halo and write its core (instance ids local to the block)."""
    predictor, out_labels, out_probs, out_local = resources(job)
    if out_local is not None:  # instances: pass 2 reads these ids and writes the final ones into labels
        out_labels = out_local
    ey0, ey1, ex0, ex1 = block.ext
    y0, y1, x0, x1 = block.core
    region = read_region(job.image.data, (block.plane, slice(None), slice(ey0, ey1), slice(ex0, ex1)))
    probs = predictor.probabilities(region, Normalisation.from_dict(job.norm))
    labels = predictor.labels_from(probs)
    core = (slice(y0 - ey0, y1 - ey0), slice(x0 - ex0, x1 - ex0))
    out_labels[_out_key(job, block.plane, slice(y0, y1), slice(x0, x1))] = labels[core].astype(out_labels.dtype)
    if out_probs is not None:
        out_probs[_out_key(job, block.plane, slice(y0, y1), slice(x0, x1), True)] = probs[(slice(None),) + core]
    if not job.instances:
        return None
    present = np.unique(labels[core])
    return Summary(block, int(labels.max()), present[present > 0].astype(np.int64),
                   _seams(labels, block, job.image.shape[2:]))


def _relabel_block(job: Job, block: Block, lut: np.ndarray) -> None:
    """Pass 2: map a block's local ids to the final, seam-consistent ones (local ids are kept: a rerun is harmless)."""
    _, out_labels, _, out_local = resources(job)
    y0, y1, x0, x1 = block.core
    key = _out_key(job, block.plane, slice(y0, y1), slice(x0, x1))
    out_labels[key] = lut[np.asarray(out_local[key])]


def _create_outputs(tmp: Path, image: Image, predictor: Predictor, probabilities: bool, instances: bool, *,
                    chunk: int) -> tuple[tuple[int, ...], Any]:
    import zarr

    p, _, h, w = image.shape
    lead, lead_chunks = ((), ()) if p == 1 else ((p,), (1,))
    dtype = label_dtype(predictor, instances)
    root = zarr.open_group(str(tmp), mode="w")
    shape = lead + (h, w)
    labels = create_array(root, "labels", shape, lead_chunks + (chunk, chunk), dtype)
    probs = local = None
    if probabilities:
        k = predictor.classes
        probs = create_array(root, "probabilities", lead + (k, h, w), lead_chunks + (k, chunk, chunk), np.float32)
    if instances:
        local = create_array(root, LOCAL, shape, lead_chunks + (chunk, chunk), dtype)
    root.attrs["napari_tower"] = {
        "source": image.source, "axes": "YX" if p == 1 else "PYX", "target": predictor.target,
        "instances": instances, "classes": predictor.classes,
    }
    return shape, (labels, probs, local)


def _plane_of(b: Block) -> int:
    return b.plane


def _row_col(b: Block) -> tuple[int, int]:
    return (b.row, b.col)


def plane_layout(predictor: Predictor, image: Image, block: int | None, halo: int | None, chunk: int) -> Layout:
    """Blocks of the planes of `image` for a 2D model, checked settings."""
    cfg = predictor.cfg
    block = int(block if block is not None else cfg.block)
    halo = int(halo if halo is not None else cfg.halo)
    if chunk < 16 or chunk % 16:
        raise TowerError(f"chunk {chunk} is invalid: use a multiple of 16 (e.g. 512)")
    if block < 64:
        raise TowerError(f"block {block} is invalid: use at least 64 pixels (e.g. 4096)")
    chunk = min(chunk, block // 16 * 16)  # small blocks: smaller chunks, so blocks still never share one
    if halo < 0:
        raise TowerError(f"halo {halo} is invalid: use 0 or more pixels (at least the largest object's diameter)")
    if cfg.instances and halo < 1:
        raise TowerError("halo 0 cannot join objects across block seams: use a halo of at least the largest "
                         "object's diameter (--halo)")
    return Layout(
        blocks=block_grid(image.shape, core_size(block, chunk), halo, cfg.tile),
        settings={"block": block, "halo": halo, "chunk": chunk}, squeeze=image.shape[0] == 1,
        create_outputs=partial(_create_outputs, chunk=chunk), predict=_predict_block, relabel=_relabel_block,
        group=_plane_of, position=_row_col, neighbours=(((1, 0), "bottom", "top"), ((0, 1), "right", "left")))


def predict_blockwise(
    predictor: Predictor,
    image: Image,
    out: str | os.PathLike,
    *,
    block: int | tuple[int, int, int] | None = None,
    halo: int | tuple[int, int, int] | None = None,
    chunk: int = DEFAULT_CHUNK,
    workers: int = 1,
    scheduler: Any = None,
    probabilities: bool = False,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BlockwiseResult:
    """Predict `image` block by block into the zarr group `out` ("labels", optionally "probabilities").

    Parameters
    ----------
    predictor
        A loaded segmenter; its config decides tiling, instances and min_size. A 3D model predicts
        volumes in (z, y, x) blocks (`blockwise3d.volume_layout`).
    image
        Any `Image`; zarr/dask/memory-mapped data is read one block (plus halo) at a time.
    block, halo
        Approximate core side of a block and the context read around it (defaults: the predictor's
        `PredictConfig.block` and `.halo`). The core is rounded to a multiple of `chunk`. The halo must
        hold the largest objects whole for consistent instances. 3D: also (z, y, x) triples.
    chunk
        Output chunk side (labels chunks are chunk x chunk, one plane each; 3D: a block's core slices).
    workers
        Blocks predicted at once in local threads (ignored with `scheduler`).
    scheduler
        A dask.distributed scheduler address (e.g. "tcp://host:8786") or a `distributed.Client`; the
        image must be zarr (or dask) on storage the workers share, and `out` must be shared too.
    probabilities
        Also write class probabilities (float32, (P,) K, Y, X).
    progress, should_stop
        ``progress(done, total)`` after each block; Stop is checked while blocks run.
    """
    if predictor.spatial_dims == 3:
        layout = volume_layout(predictor, image, block, halo, chunk)
    else:
        layout = plane_layout(predictor, image, block, halo, chunk)  # type: ignore[arg-type]
    out = Path(out)
    check_target(predictor, image, out, workers, scheduler)
    return run_blocks(predictor, image, out, layout, workers=workers, scheduler=scheduler,
                      probabilities=probabilities, progress=progress, should_stop=should_stop)


__all__ = ["Block", "BlockwiseResult", "block_grid", "core_size", "plane_layout", "predict_blockwise"]
