"""The run of a block-wise prediction, whatever the blocks are: planes of a 2D model, volumes of a 3D one.

A `Layout` says what a block is (`blockwise` for planes, `blockwise3d` for volumes): the blocks,
the output arrays, the task that predicts one block (pass 1) and the one that relabels it (pass 2),
and how the blocks neighbour each other. `run_blocks` does the rest the same way for both: the
partial folder and its journal (so a stopped or killed run resumes), the runner (threads or a dask
cluster), pass 1, seam-consistent instance ids (`final_ids`), pass 2, and moving the result into
place. A block summary (`Summary`) carries each block's local ids and its labels on both sides of
every face it shares with a neighbour; `seam_pairs` joins the objects two blocks agree on.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PredictConfig, from_dict, to_dict
from ..data import Image
from ..errors import TowerError
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

LOCAL = "block_local_ids"  # pass 1's instance ids, per block; removed before the output is moved into place
SEAM_IOU = 0.5
SIDES = ("top", "bottom", "left", "right", "front", "back")  # y, x and (3D) z faces


@dataclass
class BlockwiseResult:
    """Where the prediction went and what it holds."""

    path: Path
    shape: tuple[int, ...]
    blocks: int
    objects: list[int] | None  # instances per plane (2D) or per volume (3D), when instances were predicted
    seconds: float
    resumed: int = 0  # blocks an interrupted earlier run had finished (not predicted again)


@dataclass
class Job:
    """What a block task needs; pickled once per worker on a cluster (the image must be on shared storage)."""

    token: str
    image: Image
    norm: dict[str, list[float]]
    out: str
    squeeze: bool  # single plane: outputs are (Y, X), not (1, Y, X)
    instances: bool
    probabilities: bool
    ckpt: Any = None  # for workers in other processes (a ModelBundle); None when the predictor is local
    predict_cfg: dict[str, Any] = field(default_factory=dict)


@dataclass
class Summary:
    """What the second pass needs from a block: its local ids and its labels on both sides of each seam."""

    block: Any
    n_local: int
    present: np.ndarray  # local ids found in the core
    # side -> (core face at the seam, the face beyond it); None once the faces live only in the journal
    seams: dict[str, tuple[np.ndarray, np.ndarray] | None]

    def without_faces(self) -> Summary:
        """This summary with its seam faces dropped (they stay in the journal), so that the summaries held while
        blocks run do not grow with the volume: a 512 x 2048 x 2048 volume has 576 blocks of ~2.6 MB of faces."""
        return Summary(self.block, self.n_local, self.present, dict.fromkeys(self.seams))


Faces = Callable[["Summary", str], tuple[np.ndarray, np.ndarray]]  # (summary, side) -> (core face, face beyond)


def faces_in_memory(s: Summary, side: str) -> tuple[np.ndarray, np.ndarray]:
    faces = s.seams[side]
    if faces is None:
        raise ValueError(f"the {side} faces of block {s.block} are not in memory: read them from the journal")
    return faces


@dataclass(frozen=True)
class Layout:
    """What makes planes and volumes differ; the functions run on workers, so they are module-level."""

    blocks: list[Any]
    settings: dict[str, Any]  # what decides the output besides the model, image and config (for the journal)
    squeeze: bool
    create_outputs: Callable[[Path, Image, Predictor, bool, bool], tuple[tuple[int, ...], Any]]
    predict: Callable[[Job, Any], Summary | None]
    relabel: Callable[[Job, Any, np.ndarray], None]
    group: Callable[[Any], int]  # blocks of one group (a plane, a volume) are numbered together
    position: Callable[[Any], tuple[int, ...]]  # a block's place in its group's grid, raster order
    neighbours: Sequence[tuple[tuple[int, ...], str, str]]  # (step in position, my side, their side)


def core_size(block: int, chunk: int) -> int:
    """Side of a block's core: `block` rounded to a whole number of output chunks (so blocks never share one).

    The tiler balances its tile size to the region it is given, so a block with its halo costs
    about what the same pixels cost inside a whole-image prediction, plus the halo.
    """
    return max(chunk, round(block / chunk) * chunk)


def extent(start: int, stop: int, length: int, halo: int, minimum: int) -> tuple[int, int]:
    """Core [start, stop) grown by `halo` (clipped to the image) and, at image edges, to at least `minimum`
    pixels, so the tiler sees full-size tiles there, as it does on the whole image (no padded tiles)."""
    lo, hi = max(0, start - halo), min(length, stop + halo)
    need = min(minimum, length)
    if hi - lo < need:
        lo = max(0, min(lo, hi - need))
        hi = min(length, max(hi, lo + need))
    return lo, hi


def summary_arrays(s: Summary) -> dict[str, np.ndarray]:
    """A summary as plain arrays, for the journal."""
    out = {"n_local": np.array(s.n_local), "present": s.present}
    for side in s.seams:
        out[f"{side}_core"], out[f"{side}_beyond"] = faces_in_memory(s, side)
    return out


def summary_from(block: Any, arrays: dict[str, np.ndarray], sides: Any = None) -> Summary:
    """A journal entry as a Summary; with `sides` (the sides it holds faces for) the faces need not be in `arrays`."""
    if sides is None:
        seams: dict = {side: (arrays[f"{side}_core"], arrays[f"{side}_beyond"]) for side in SIDES
                       if f"{side}_core" in arrays}
    else:
        seams = dict.fromkeys(sides)
    return Summary(block, int(arrays["n_local"]), arrays["present"].astype(np.int64), seams)


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only; elsewhere nothing to do).

    Each block allocates and frees hundreds of MB in worker threads, and glibc keeps freed pages in its per-thread
    arenas: without this the resident size crept up block after block (144 small 3D blocks: 584 -> 727 MB; with
    it 371 -> 523 MB, `benchmarks/bench_blockwise3d.py` for the full-size figure).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, loaded once; None where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL("libc.so.6").malloc_trim
    return None


def task_name(step: str, group: int, position: tuple[int, ...]) -> str:
    return "-".join([step, str(group), *map(str, position)])


def open_outputs(job: Job) -> tuple[Any, Any, Any]:
    """Labels, probabilities (or None) and, for instances, the block-local ids of pass 1 (or None)."""
    import zarr

    def open_one(name: str, wanted: bool) -> Any:
        return zarr.open_array(os.path.join(job.out, name), mode="r+") if wanted else None

    return open_one("labels", True), open_one("probabilities", job.probabilities), open_one(LOCAL, job.instances)


def resources(job: Job) -> tuple[Predictor, Any, Any, Any]:
    """The predictor and output arrays of this job, built once per process (a cluster worker's first task)."""
    with RESOURCES_LOCK:
        if job.token not in RESOURCES:
            if job.ckpt is None:
                raise RuntimeError("internal error: a local block job ran without its predictor")
            RESOURCES.clear()  # one job at a time per worker: free the previous model
            predictor = Predictor(job.ckpt, from_dict(PredictConfig, job.predict_cfg))
            RESOURCES[job.token] = (predictor, *open_outputs(job))
        return RESOURCES[job.token]


def create_array(root: Any, name: str, shape: tuple, chunks: tuple, dtype: Any) -> Any:
    if hasattr(root, "create_array"):  # zarr 3
        return root.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    return root.zeros(name, shape=shape, chunks=chunks, dtype=dtype)  # zarr 2


def label_dtype(predictor: Predictor, instances: bool) -> Any:
    return np.uint32 if instances else np.uint8 if predictor.classes <= 255 else np.uint16


def seam_pairs(a: Summary, b: Summary, side_a: str, side_b: str, faces: Faces = faces_in_memory
               ) -> list[tuple[int, int]]:
    """(id in A, id in B) pairs of objects the two blocks both see crossing their shared seam."""
    a_core, a_beyond = faces(a, side_a)
    b_core, b_beyond = faces(b, side_b)
    # Row/column/slice on A's side: A's own labels vs B's view of them; on B's side: A's view vs B's own.
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


def final_ids(summaries: list[Summary], layout: Layout, faces: Faces = faces_in_memory
              ) -> tuple[dict[Any, np.ndarray], list[int]]:
    """Lookup tables (local id -> final id) per block, and the object count per group (plane or volume).

    `faces(summary, side)` gives a block's seam faces (default: those the summaries hold)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    luts: dict[Any, np.ndarray] = {}
    counts: list[int] = []
    by_group: dict[int, list[Summary]] = {}
    for s in summaries:
        by_group.setdefault(layout.group(s.block), []).append(s)
    for group in sorted(by_group):
        blocks = sorted(by_group[group], key=lambda s: layout.position(s.block))
        offsets = np.cumsum([0] + [s.n_local + 1 for s in blocks])
        where = {layout.position(s.block): k for k, s in enumerate(blocks)}
        edges: list[tuple[int, int]] = []
        for k, s in enumerate(blocks):
            for step, mine, theirs in layout.neighbours:
                j = where.get(tuple(p + d for p, d in zip(layout.position(s.block), step)))
                if j is None or mine not in s.seams or theirs not in blocks[j].seams:
                    continue
                for ia, ib in seam_pairs(s, blocks[j], mine, theirs, faces):
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


def is_prediction(path: Path) -> bool:
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


def check_target(predictor: Predictor, image: Image, out: Path, workers: int, scheduler: Any) -> None:
    """Refuse what no layout can do: a bad worker count, the input as output, a folder that is not ours."""
    if workers < 1:
        raise TowerError(f"workers {workers} is invalid: use 1 or more")
    predictor.check_image(image)
    if Path(image.source).resolve() == out.resolve():
        raise TowerError(f"the output {out} is the input image itself: choose another --out folder")
    if out.exists() and not is_prediction(out):
        raise TowerError(f"{out} exists and is not a napari-tower prediction: choose another --out, "
                         "it is never overwritten")
    if scheduler is not None:
        check_shippable(image)


def run_blocks(predictor: Predictor, image: Image, out: Path, layout: Layout, *, workers: int, scheduler: Any,
               probabilities: bool, progress: Callable[[int, int], None] | None,
               should_stop: Callable[[], bool] | None) -> BlockwiseResult:
    """Predict every block of `layout` into the zarr group `out`, resuming an interrupted run of the same job."""
    t0 = time.perf_counter()
    cfg = predictor.cfg
    runner: Any = ClusterRunner(scheduler) if scheduler is not None else LocalRunner(workers)
    token = uuid.uuid4().hex
    tmp = out.with_name(f".{out.name}.partial")
    keep_partial = False
    try:
        norm = predictor.normalisation_for(image)
        instances = bool(cfg.instances)
        digest = fingerprint(predictor.ckpt, image, {"cfg": to_dict(cfg), **layout.settings,
                                                     "probabilities": probabilities, "norm": norm.to_dict()})
        journal = BlockJournal.reopen(tmp, digest)
        try:
            if journal is None:
                if tmp.exists():
                    shutil.rmtree(tmp)
                out.parent.mkdir(parents=True, exist_ok=True)
                shape, arrays = layout.create_outputs(tmp, image, predictor, probabilities, instances)
                journal = BlockJournal.create(tmp, digest)
            else:  # an interrupted run of this same job: keep its finished blocks
                arrays = open_outputs(Job(token, image, {}, str(tmp), False, instances, probabilities))
                shape = tuple(arrays[0].shape)
        except (OSError, TowerError) as exc:
            raise TowerError(f"could not write {out} ({getattr(exc, 'strerror', None) or exc}): "
                             "check the folder is writable and has space") from None
        job = Job(token, image, norm.to_dict(), str(tmp), layout.squeeze, instances, probabilities)
        if scheduler is not None:
            job.ckpt, job.predict_cfg = predictor.ckpt, to_dict(cfg)
        else:
            with RESOURCES_LOCK:
                RESOURCES[token] = (predictor, *arrays)
        blocks = layout.blocks
        total = len(blocks) * (2 if instances else 1)
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            release_freed_memory()
            if progress is not None:
                progress(done, total)

        def name(step: str, b: Any) -> str:
            return task_name(step, layout.group(b), layout.position(b))

        job_ref = runner.prepare(job)
        keep_partial = True  # from here on, finished blocks are worth a resume
        summaries: dict[Any, Summary | None] = {}
        for b in blocks:
            stored = journal.load(name("predict", b), ("n_local", "present") if instances else ())
            if stored is not None:
                sides = [k[: -len("_core")] for k in journal.members(name("predict", b)) if k.endswith("_core")]
                summaries[b] = summary_from(b, stored, sides) if instances else None
        resumed = len(summaries)
        todo = [b for b in blocks if b not in summaries]
        for _ in range(resumed):
            tick()

        def predicted(i: int, summary: Summary | None) -> None:
            journal.record(name("predict", todo[i]), {} if summary is None else summary_arrays(summary))
            summaries[todo[i]] = None if summary is None else summary.without_faces()

        def faces(s: Summary, side: str) -> tuple[np.ndarray, np.ndarray]:
            stored = journal.load(name("predict", s.block), (f"{side}_core", f"{side}_beyond"))
            if stored is None:
                raise TowerError(f"the block journal in {tmp} lost an entry: delete that folder and predict again")
            return stored[f"{side}_core"], stored[f"{side}_beyond"]

        run_tasks(runner, layout.predict, job_ref, [(b,) for b in todo], tick, should_stop, predicted)
        objects = None
        if instances:
            luts, objects = final_ids([summaries[b] for b in blocks], layout, faces)
            relabel = [b for b in blocks if journal.load(name("relabel", b)) is None]
            for _ in range(len(blocks) - len(relabel)):
                tick()
            run_tasks(runner, layout.relabel, job_ref, [(b, luts[b]) for b in relabel], tick, should_stop,
                      lambda i, _: journal.record(name("relabel", relabel[i]), {}))
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
