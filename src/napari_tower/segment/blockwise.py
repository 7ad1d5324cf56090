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
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PredictConfig, from_dict, to_dict
from ..data import Image, Normalisation
from ..data.lazy import read_region
from ..errors import TowerError
from ..model_bundle import ModelBundle
from .block_journal import BlockJournal, fingerprint
from .block_runners import (
    RESOURCES,
    RESOURCES_LOCK,
    ClusterRunner,
    LocalRunner,
    PredictionStopped,
    check_shippable,
    forget,
    run_tasks,
)
from .predict import Predictor

DEFAULT_CHUNK = 512
LOCAL = "block_local_ids"  # pass 1's instance ids, per block; removed before the output is moved into place
SEAM_IOU = 0.5


@dataclass(frozen=True)
class Block:
    """One block of one plane: the core it writes and the extended region (core + halo) it reads."""

    plane: int
    row: int
    col: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1
    ext: tuple[int, int, int, int]


@dataclass
class BlockwiseResult:
    """Where the prediction went and what it holds."""

    path: Path
    shape: tuple[int, ...]
    blocks: int
    objects: list[int] | None  # instances per plane, when instances were predicted
    seconds: float
    resumed: int = 0  # blocks an interrupted earlier run had finished (not predicted again)


def core_size(block: int, chunk: int) -> int:
    """Side of a block's core: `block` rounded to a whole number of output chunks (so blocks never share one).

    The tiler balances its tile size to the region it is given, so a block with its halo costs
    about what the same pixels cost inside a whole-image prediction, plus the halo.
    """
    return max(chunk, round(block / chunk) * chunk)


def _extent(start: int, stop: int, length: int, halo: int, minimum: int) -> tuple[int, int]:
    """Core [start, stop) grown by `halo` (clipped to the image) and, at image edges, to at least `minimum`
    pixels, so the tiler sees full-size tiles there, as it does on the whole image (no padded tiles)."""
    lo, hi = max(0, start - halo), min(length, stop + halo)
    need = min(minimum, length)
    if hi - lo < need:
        lo = max(0, min(lo, hi - need))
        hi = min(length, max(hi, lo + need))
    return lo, hi


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
                ext = _extent(y0, y1, h, halo, min_extent) + _extent(x0, x1, w, halo, min_extent)
                blocks.append(Block(pi, r, c, (y0, y1, x0, x1), ext))
    return blocks


@dataclass
class _Job:
    """What a block task needs; pickled once per worker on a cluster (the image must be on shared storage)."""

    token: str
    image: Image
    norm: dict[str, list[float]]
    out: str
    squeeze: bool  # single plane: outputs are (Y, X), not (1, Y, X)
    instances: bool
    probabilities: bool
    ckpt: ModelBundle | None = None  # for workers in other processes; None when the predictor is local
    predict_cfg: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Summary:
    """What the second pass needs from a block: its local ids and its labels on both sides of each seam."""

    block: Block
    n_local: int
    present: np.ndarray  # local ids found in the core
    seams: dict[str, tuple[np.ndarray, np.ndarray]]  # side -> (core row/column at the seam, the one beyond it)


def _summary_arrays(s: _Summary) -> dict[str, np.ndarray]:
    """A summary as plain arrays, for the journal."""
    out = {"n_local": np.array(s.n_local), "present": s.present}
    for side, (core, beyond) in s.seams.items():
        out[f"{side}_core"], out[f"{side}_beyond"] = core, beyond
    return out


def _summary_from(block: Block, arrays: dict[str, np.ndarray]) -> _Summary:
    seams = {side: (arrays[f"{side}_core"], arrays[f"{side}_beyond"]) for side in ("top", "bottom", "left", "right")
             if f"{side}_core" in arrays}
    return _Summary(block, int(arrays["n_local"]), arrays["present"].astype(np.int64), seams)


def _task_name(step: str, block: Block) -> str:
    return f"{step}-{block.plane}-{block.row}-{block.col}"


def _open_outputs(job: _Job) -> tuple[Any, Any, Any]:
    """Labels, probabilities (or None) and, for instances, the block-local ids of pass 1 (or None)."""
    import zarr

    def open_one(name: str, wanted: bool) -> Any:
        return zarr.open_array(os.path.join(job.out, name), mode="r+") if wanted else None

    return open_one("labels", True), open_one("probabilities", job.probabilities), open_one(LOCAL, job.instances)


def _resources(job: _Job) -> tuple[Predictor, Any, Any, Any]:
    """The predictor and output arrays of this job, built once per process (a cluster worker's first task)."""
    with RESOURCES_LOCK:
        if job.token not in RESOURCES:
            if job.ckpt is None:
                raise RuntimeError("internal error: a local block job ran without its predictor")
            RESOURCES.clear()  # one job at a time per worker: free the previous model
            predictor = Predictor(job.ckpt, from_dict(PredictConfig, job.predict_cfg))
            RESOURCES[job.token] = (predictor, *_open_outputs(job))
        return RESOURCES[job.token]


def _out_key(job: _Job, plane: int, ys: slice, xs: slice, channels: bool = False) -> tuple:
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


def _predict_block(job: _Job, block: Block) -> _Summary | None:
    """Pass 1: predict one block with its halo and write its core (instance ids local to the block)."""
    predictor, out_labels, out_probs, out_local = _resources(job)
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
    return _Summary(block, int(labels.max()), present[present > 0].astype(np.int64),
                    _seams(labels, block, job.image.shape[2:]))


def _relabel_block(job: _Job, block: Block, lut: np.ndarray) -> None:
    """Pass 2: map a block's local ids to the final, seam-consistent ones (local ids are kept: a rerun is harmless)."""
    _, out_labels, _, out_local = _resources(job)
    y0, y1, x0, x1 = block.core
    key = _out_key(job, block.plane, slice(y0, y1), slice(x0, x1))
    out_labels[key] = lut[np.asarray(out_local[key])]


def _seam_pairs(a: _Summary, b: _Summary, side_a: str, side_b: str) -> list[tuple[int, int]]:
    """(id in A, id in B) pairs of objects the two blocks both see crossing their shared seam."""
    a_core, a_beyond = a.seams[side_a]
    b_core, b_beyond = b.seams[side_b]
    # Row/column on A's side: A's own labels vs B's view of them; on B's side: A's view vs B's own.
    view_a = np.concatenate([a_core, a_beyond]).astype(np.int64)
    view_b = np.concatenate([b_beyond, b_core]).astype(np.int64)
    ids_a, count_a = np.unique(view_a[view_a > 0], return_counts=True)
    ids_b, count_b = np.unique(view_b[view_b > 0], return_counts=True)
    both = (view_a > 0) & (view_b > 0) & np.isin(view_a, a.present) & np.isin(view_b, b.present)
    if not both.any():
        return []
    pairs, inter = np.unique(np.stack([view_a[both], view_b[both]]), axis=1, return_counts=True)
    na = count_a[np.searchsorted(ids_a, pairs[0])]
    nb = count_b[np.searchsorted(ids_b, pairs[1])]
    iou = inter / (na + nb - inter)
    keep = iou >= SEAM_IOU
    return list(zip(pairs[0][keep].tolist(), pairs[1][keep].tolist()))


def _final_ids(summaries: list[_Summary]) -> tuple[dict[Block, np.ndarray], list[int]]:
    """Lookup tables (local id -> final id) per block, and the object count per plane."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    luts: dict[Block, np.ndarray] = {}
    counts: list[int] = []
    by_plane: dict[int, list[_Summary]] = {}
    for s in summaries:
        by_plane.setdefault(s.block.plane, []).append(s)
    for plane in sorted(by_plane):
        blocks = sorted(by_plane[plane], key=lambda s: (s.block.row, s.block.col))
        offsets = np.cumsum([0] + [s.n_local + 1 for s in blocks])
        where = {(s.block.row, s.block.col): k for k, s in enumerate(blocks)}
        edges: list[tuple[int, int]] = []
        for k, s in enumerate(blocks):
            for (dr, dc, mine, theirs) in ((1, 0, "bottom", "top"), (0, 1, "right", "left")):
                j = where.get((s.block.row + dr, s.block.col + dc))
                if j is None or mine not in s.seams or theirs not in blocks[j].seams:
                    continue
                for ia, ib in _seam_pairs(s, blocks[j], mine, theirs):
                    edges.append((offsets[k] + ia, offsets[j] + ib))
        n = int(offsets[-1])
        e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
        _, component = connected_components(graph, directed=False)
        nodes = np.concatenate([offsets[k] + s.present for k, s in enumerate(blocks)] + [np.zeros(0, np.int64)])
        comps = component[nodes]
        # Final ids follow the first appearance of each object in raster order of blocks.
        unique, first = np.unique(comps, return_index=True)
        rank = np.empty(unique.size, np.int64)
        rank[np.argsort(first)] = np.arange(1, unique.size + 1)
        final = rank[np.searchsorted(unique, comps)]
        counts.append(int(unique.size))
        at = 0
        for s in blocks:
            lut = np.zeros(s.n_local + 1, np.uint32)
            lut[s.present] = final[at: at + s.present.size]
            at += s.present.size
            luts[s.block] = lut
    return luts, counts


def _create_outputs(tmp: Path, image: Image, predictor: Predictor, chunk: int, probabilities: bool,
                    instances: bool) -> tuple[tuple[int, ...], Any]:
    import zarr

    p, _, h, w = image.shape
    lead, lead_chunks = ((), ()) if p == 1 else ((p,), (1,))
    dtype = np.uint32 if instances else np.uint8 if predictor.classes <= 255 else np.uint16
    root = zarr.open_group(str(tmp), mode="w")

    def create(name: str, shape: tuple, chunks: tuple, dt: Any) -> Any:
        if hasattr(root, "create_array"):  # zarr 3
            return root.create_array(name, shape=shape, chunks=chunks, dtype=dt, fill_value=0)
        return root.zeros(name, shape=shape, chunks=chunks, dtype=dt)  # zarr 2

    shape = lead + (h, w)
    labels = create("labels", shape, lead_chunks + (chunk, chunk), dtype)
    probs = local = None
    if probabilities:
        k = predictor.classes
        probs = create("probabilities", lead + (k, h, w), lead_chunks + (k, chunk, chunk), np.float32)
    if instances:
        local = create(LOCAL, shape, lead_chunks + (chunk, chunk), dtype)
    root.attrs["napari_tower"] = {
        "source": image.source, "axes": "YX" if p == 1 else "PYX", "target": predictor.target,
        "instances": instances, "classes": predictor.classes,
    }
    return shape, (labels, probs, local)


def _is_prediction(path: Path) -> bool:
    """Whether `path` is a zarr group written by predict_blockwise (the only kind it may replace)."""
    import zarr

    try:
        return "napari_tower" in dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - not zarr, not a group, unreadable: not ours
        return False


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished output into place; an existing output is only removed once the new one is there."""
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def predict_blockwise(
    predictor: Predictor,
    image: Image,
    out: str | os.PathLike,
    *,
    block: int | None = None,
    halo: int | None = None,
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
        A loaded segmenter; its config decides tiling, instances and min_size.
    image
        Any `Image`; zarr/dask/memory-mapped data is read one block (plus halo) at a time.
    block, halo
        Approximate core side of a block and the context read around it (defaults: the predictor's
        `PredictConfig.block` and `.halo`). The core is rounded to a multiple of `chunk`. The halo must
        hold the largest objects whole for consistent instances.
    chunk
        Output chunk side (labels chunks are chunk x chunk, one plane each).
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
    t0 = time.perf_counter()
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
    if workers < 1:
        raise TowerError(f"workers {workers} is invalid: use 1 or more")
    if cfg.instances and halo < 1:
        raise TowerError("halo 0 cannot join objects across block seams: use a halo of at least the largest "
                         "object's diameter (--halo)")
    predictor.check_image(image)
    out = Path(out)
    if Path(image.source).resolve() == out.resolve():
        raise TowerError(f"the output {out} is the input image itself: choose another --out folder")
    if out.exists() and not _is_prediction(out):
        raise TowerError(f"{out} exists and is not a napari-tower prediction: choose another --out, "
                         "it is never overwritten")
    if scheduler is not None:
        check_shippable(image)
    runner: Any = ClusterRunner(scheduler) if scheduler is not None else LocalRunner(workers)
    token = uuid.uuid4().hex
    tmp = out.with_name(f".{out.name}.partial")
    keep_partial = False
    try:
        norm = predictor.normalisation_for(image)
        instances = bool(cfg.instances)
        digest = fingerprint(predictor.ckpt, image, {"cfg": to_dict(cfg), "block": block, "halo": halo,
                                                     "chunk": chunk, "probabilities": probabilities,
                                                     "norm": norm.to_dict()})
        journal = BlockJournal.reopen(tmp, digest)
        try:
            if journal is None:
                if tmp.exists():
                    shutil.rmtree(tmp)
                out.parent.mkdir(parents=True, exist_ok=True)
                shape, arrays = _create_outputs(tmp, image, predictor, chunk, probabilities, instances)
                journal = BlockJournal.create(tmp, digest)
            else:  # an interrupted run of this same job: keep its finished blocks
                arrays = _open_outputs(_Job(token, image, {}, str(tmp), False, instances, probabilities))
                shape = tuple(arrays[0].shape)
        except (OSError, TowerError) as exc:
            raise TowerError(f"could not write {out} ({getattr(exc, 'strerror', None) or exc}): "
                             "check the folder is writable and has space") from None
        job = _Job(token, image, norm.to_dict(), str(tmp), image.shape[0] == 1, instances, probabilities)
        if scheduler is not None:
            job.ckpt, job.predict_cfg = predictor.ckpt, to_dict(cfg)
        else:
            with RESOURCES_LOCK:
                RESOURCES[token] = (predictor, *arrays)
        core = core_size(block, chunk)
        blocks = block_grid(image.shape, core, halo, cfg.tile)
        total = len(blocks) * (2 if instances else 1)
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        job_ref = runner.prepare(job)
        keep_partial = True  # from here on, finished blocks are worth a resume
        summaries: dict[Block, _Summary | None] = {}
        for b in blocks:
            stored = journal.load(_task_name("predict", b))
            if stored is not None:
                summaries[b] = _summary_from(b, stored) if instances else None
        resumed = len(summaries)
        todo = [b for b in blocks if b not in summaries]
        for _ in range(resumed):
            tick()

        def predicted(i: int, summary: _Summary | None) -> None:
            summaries[todo[i]] = summary
            journal.record(_task_name("predict", todo[i]), {} if summary is None else _summary_arrays(summary))

        run_tasks(runner, _predict_block, job_ref, [(b,) for b in todo], tick, should_stop, predicted)
        objects = None
        if instances:
            luts, objects = _final_ids([summaries[b] for b in blocks])
            relabel = [b for b in blocks if journal.load(_task_name("relabel", b)) is None]
            for _ in range(len(blocks) - len(relabel)):
                tick()
            run_tasks(runner, _relabel_block, job_ref, [(b, luts[b]) for b in relabel], tick, should_stop,
                      lambda i, _: journal.record(_task_name("relabel", relabel[i]), {}))
        runner.close(token)
        runner = None
        try:
            for leftover in (tmp / LOCAL, journal.folder):
                shutil.rmtree(leftover, ignore_errors=True)
            _replace_dir(tmp, out)
        except OSError as exc:
            raise TowerError(f"could not move the prediction into {out} ({exc.strerror or exc}): "
                             "check the folder") from None
        keep_partial = False
        return BlockwiseResult(out, shape, len(blocks), objects, time.perf_counter() - t0, resumed)
    except (PredictionStopped, KeyboardInterrupt):
        raise  # the finished blocks stay in the partial folder: the same command resumes from them
    except BaseException:
        keep_partial = False
        raise
    finally:
        if runner is not None:
            runner.close(token)
        forget(token)
        if tmp.exists() and not keep_partial:
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["Block", "BlockwiseResult", "block_grid", "core_size", "predict_blockwise"]
