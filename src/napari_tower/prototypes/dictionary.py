"""A prototype dictionary: cluster pixel embeddings, name the clusters, get pseudo-labels.

After self-supervised pretraining, pixels that look alike (to the encoder) lie
close together. K-means over a seeded sample of pixel descriptors gives K
prototypes; every pixel is then assigned to its nearest one. A user names a
few prototypes (background, nuclei, ...), and the naming becomes sparse
pseudo-labels (0 = not annotated, 1 = background, 2.. = classes, as in
`segment.targets`) that fine-tuning reads directly. Pixels whose nearest
prototype of another class is almost as close are left at 0, so the
segmenter is not taught the clustering's mistakes at object edges.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..config import PrototypeConfig, from_dict, to_dict
from ..data import Image
from ..errors import StopRequested, TowerError
from ..model_bundle import ModelBundle
from ..segment.tiling import predict_tiled
from ..train.engine import Progress, ProgressCallback, StopCheck
from .features import PixelEmbedder, sample_descriptors
from .kmeans import kmeans

TOP = 4  # nearest prototypes kept per pixel: enough to find the nearest one of another class in practice

UNASSIGNED, BACKGROUND, FOREGROUND = 0, 1, 2
CLASS_NAMES = {"-": UNASSIGNED, "none": UNASSIGNED, "unassigned": UNASSIGNED, "ignore": UNASSIGNED,
               "bg": BACKGROUND, "background": BACKGROUND, "fg": FOREGROUND, "foreground": FOREGROUND}


@dataclass
class Prototypes:
    """K centroids in descriptor space, numbered 1..K by how many sampled pixels they took (largest first)."""

    centroids: np.ndarray  # (K, D) float32
    shares: np.ndarray  # (K,) share of the fitting sample nearest to each prototype
    config: PrototypeConfig
    levels: tuple[int, ...]  # encoder levels the descriptors used (resolved from config.levels)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        """Write to an .npz file atomically (arrays and a JSON string only, read back without pickle)."""
        path = Path(path)
        meta = json.dumps({"config": to_dict(self.config), "levels": list(self.levels)})
        with atomic_write(path, "prototypes") as fh:
            np.savez(fh, centroids=self.centroids, shares=self.shares, meta=np.array(meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Prototypes:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                centroids, shares = data["centroids"].astype(np.float32), data["shares"].astype(np.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise TowerError(f"{path} is not a prototypes file written by napari-tower ({type(exc).__name__}): "
                             "give the prototypes.npz from an earlier `napari-tower prototypes` run") from None
        return cls(centroids, shares, from_dict(PrototypeConfig, meta["config"]), tuple(meta["levels"]))


@dataclass
class Assignment:
    """Where one image's pixels fall: their nearest prototypes and how much farther the runners-up are."""

    nearest: np.ndarray  # (P, TOP, Y, X) uint8 prototype indices 0..K-1, nearest first
    gaps: np.ndarray  # (P, TOP - 1, Y, X) float16: squared-distance gap from the nearest to the m-th nearest
    k: int  # prototypes in the dictionary

    def prototype_map(self) -> np.ndarray:
        """(P, Y, X) prototype ids 1..K, as a Labels layer shows them."""
        return self.nearest[:, 0].astype(np.uint8) + 1


@dataclass
class PrototypeResult:
    prototypes: Prototypes
    assignments: list[Assignment]


def _report(callback: ProgressCallback | None, t0: float, done: int, total: int, message: str = "") -> None:
    if callback is None:
        return
    elapsed = time.perf_counter() - t0
    rate = done / elapsed if elapsed > 0 else 0.0
    # step/total count image planes (sampled, then assigned); no patch rate, which would mislabel them.
    callback(Progress("prototypes", done, total, elapsed_s=elapsed, eta_s=(total - done) / rate if rate else 0.0,
                      done=done == total, message=message))


def fit_prototypes(embedder: PixelEmbedder, images: Sequence[Image], cfg: PrototypeConfig,
                   progress: Callable[[int, int], None] | None = None,
                   should_stop: StopCheck | None = None) -> Prototypes:
    """K-means over a seeded sample of pixel descriptors of `images`."""
    norms = [embedder.normalisation(im) for im in images]
    x = sample_descriptors(embedder, images, norms, cfg.samples, cfg.seed, progress=progress, should_stop=should_stop)
    if x.shape[0] < cfg.k:
        raise TowerError(f"the images have only {x.shape[0]} pixels, fewer than K = {cfg.k}: use a smaller K")
    result = kmeans(x, cfg.k, cfg.seed, cfg.iterations, cfg.restarts)
    counts = torch.bincount(result.labels, minlength=cfg.k).numpy()
    order = np.argsort(-counts, kind="stable")  # prototype 1 is the commonest (often the background)
    return Prototypes(result.centroids.numpy()[order].astype(np.float32),
                      (counts[order] / counts.sum()).astype(np.float32), cfg, embedder.levels)


def assign_image(embedder: PixelEmbedder, image: Image, prototypes: Prototypes,
                 should_stop: StopCheck | None = None) -> Assignment:
    """Nearest prototypes of every pixel of every plane of `image` (tiled, so any size works)."""
    embedder.check_image(image)
    cfg = prototypes.config
    norm = embedder.normalisation(image)
    centroids = torch.from_numpy(prototypes.centroids)
    top = min(TOP, prototypes.k)
    p, _, h, w = image.shape
    nearest = np.zeros((p, top, h, w), np.uint8)
    gaps = np.zeros((p, top - 1, h, w), np.float16)
    for i in range(p):
        if should_stop is not None and should_stop():
            raise StopRequested
        plane = image.data[i]

        class _Normalised:
            shape = plane.shape
            ndim = 3

            # `plane` bound now: this plane's view is read only within this iteration (predict_tiled below).
            def __getitem__(self, key, plane=plane):  # noqa: ANN001
                return norm.apply(np.asarray(plane[key]), channel_axis=0)

        scores = predict_tiled(_Normalised(), lambda t: embedder.scores(t, centroids), prototypes.k,
                               tile=cfg.tile, overlap=cfg.overlap, batch=1)
        s = torch.from_numpy(scores)
        values, idx = torch.topk(s, top, dim=0, largest=False)
        nearest[i] = idx.numpy().astype(np.uint8)
        gaps[i] = (values[1:] - values[:1]).numpy().astype(np.float16)
    return Assignment(nearest, gaps, prototypes.k)


def find_prototypes(images: Sequence[Image], checkpoint: ModelBundle, cfg: PrototypeConfig,
                    callback: ProgressCallback | None = None, should_stop: StopCheck | None = None,
                    prototypes: Prototypes | None = None) -> PrototypeResult:
    """Fit K prototypes on `images` (or reuse `prototypes`) and assign every pixel of every image.

    `checkpoint` is a pretraining checkpoint (a segmenter's encoder works too). The same images,
    checkpoint and seed give the same prototypes and maps.
    """
    if not images:
        raise TowerError("no images given: pass at least one image to find prototypes in")
    cfg.validate()
    if prototypes is not None:
        cfg = prototypes.config
        if tuple(cfg.levels) == ():
            cfg = from_dict(PrototypeConfig, {**to_dict(cfg), "levels": list(prototypes.levels)})
    embedder = PixelEmbedder(checkpoint, cfg)
    for im in images:
        embedder.check_image(im)
    if prototypes is not None and prototypes.centroids.shape[1] != embedder.dims:
        raise TowerError(f"these prototypes describe pixels with {prototypes.centroids.shape[1]} numbers but this "
                         f"model gives {embedder.dims}: use the checkpoint the prototypes were found with")
    planes = sum(im.shape[0] for im in images)
    total = (0 if prototypes is not None else planes) + planes
    t0 = time.perf_counter()
    stop = should_stop or (lambda: False)
    try:
        if prototypes is None:
            prototypes = fit_prototypes(embedder, images, cfg, lambda d, _: _report(callback, t0, d, total), stop)
        done = total - planes
        assignments = []
        for im in images:
            assignments.append(assign_image(embedder, im, prototypes, stop))
            done += im.shape[0]
            _report(callback, t0, done, total, f"{prototypes.k} prototypes" if done == total else "")
    except StopRequested:
        raise TowerError("finding prototypes stopped") from None
    return PrototypeResult(prototypes, assignments)


def class_margin(assignment: Assignment, lut: np.ndarray) -> np.ndarray:
    """(P, Y, X) how much farther the nearest prototype of another class is than the nearest one.

    Unassigned prototypes count as a class of their own. When none of the kept runners-up
    belongs to another class, the largest kept gap is a lower bound, used as is.
    """
    cls = lut[assignment.nearest]  # (P, TOP, Y, X)
    gaps = assignment.gaps.astype(np.float32)
    if gaps.shape[1] == 0:
        return np.full(cls[:, 0].shape, np.inf, np.float32)
    all_kept = assignment.nearest.shape[1] == assignment.k
    margin = np.full(cls[:, 0].shape, np.inf, np.float32) if all_kept else gaps[:, -1].copy()
    for m in range(gaps.shape[1] - 1, -1, -1):  # nearest runner-up of another class wins
        other = cls[:, m + 1] != cls[:, 0]
        margin = np.where(other, gaps[:, m], margin)
    return margin


def pseudo_labels(assignment: Assignment, mapping: dict[int, int], ignore: float = 0.2) -> np.ndarray:
    """Sparse labels (P, Y, X) uint8 from a naming of prototypes {prototype id 1..K: class}.

    Classes follow the sparse convention: 1 = background, 2.. = classes; prototypes not named (or
    named 0) give 0 = not annotated. In every plane, the least certain `ignore` share of each
    class's pixels (smallest margin to the nearest prototype of another class) is left at 0 too.
    """
    k = assignment.k
    lut = np.zeros(k, np.uint8)
    for proto, cls in mapping.items():
        if not 1 <= proto <= k:
            raise TowerError(f"prototype {proto} does not exist: use ids 1..{k}")
        if not 0 <= cls <= 255:
            raise TowerError(f"class {cls} for prototype {proto} is invalid: use 1 = background, 2.. = classes")
        lut[proto - 1] = cls
    if not lut.any():
        raise TowerError("no prototype has a class: name at least one (e.g. 1=bg, 2=fg)")
    if not 0 <= ignore < 1:
        raise TowerError(f"ignore {ignore} is invalid: use a share in [0, 1)")
    labels = lut[assignment.nearest[:, 0]]
    if ignore > 0:
        margin = class_margin(assignment, lut)
        for p in range(labels.shape[0]):
            for cls in np.unique(labels[p]):
                if cls == UNASSIGNED:
                    continue
                here = labels[p] == cls
                cut = np.quantile(margin[p][here], ignore)
                labels[p][here & (margin[p] <= cut)] = UNASSIGNED
    return labels


def majority_mapping(prototype_map: np.ndarray, classes: np.ndarray, min_pixels: int = 1) -> dict[int, int]:
    """Name each prototype after the class most of its pixels have in one labelled image.

    `classes` is a dense class map of the same image (0 = background, 1.. = classes; pass
    `instances > 0` for an instance mask). Returns {prototype id: sparse class (1 = background,
    2.. = classes)}; prototypes with fewer than `min_pixels` pixels in the image stay unnamed.
    """
    if prototype_map.shape != classes.shape:
        raise TowerError(f"the prototype map has shape {prototype_map.shape} but the labels have {classes.shape}: "
                         "give the labels of the same image")
    classes = np.asarray(classes).astype(np.int64)
    mapping = {}
    for proto in np.unique(prototype_map):
        if proto == 0:
            continue
        here = classes[prototype_map == proto]
        if here.size >= min_pixels:
            mapping[int(proto)] = int(np.bincount(here).argmax()) + 1
    return mapping


def most_typical_image(assignments: Sequence[Assignment]) -> int:
    """Index of the image whose mix of prototypes is closest (L1) to the average mix: the one to label.

    Needs no labels. An image that holds the prototypes in their usual proportions lets a majority
    naming see each prototype as it mostly appears; an atypical one can name a prototype after its
    exceptions (on DSB2018 a randomly drawn image did so in 2 of 20 draws).
    """
    if not assignments:
        raise TowerError("no images: find prototypes first")
    k = assignments[0].k
    mixes = np.array([np.bincount(a.nearest[:, 0].ravel(), minlength=k) / a.nearest[:, 0].size for a in assignments])
    return int(np.abs(mixes - mixes.mean(0)).sum(1).argmin())


def parse_mapping(text: str, k: int | None = None) -> dict[int, int]:
    """Read a naming such as "1=bg,2=fg,3=fg,5=3" into {prototype id: sparse class}.

    Names: bg/background = 1, fg/foreground = 2, -/none/unassigned = 0 (left out), or a class number
    in the sparse convention (1 = background, 2.. = classes). Unlisted prototypes stay unnamed.
    """
    mapping: dict[int, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        try:
            proto = int(key)
        except ValueError:
            proto = -1
        name = value.strip().lower()
        if not sep or proto < 1 or (k is not None and proto > k):
            raise TowerError(f"'{item}' is not a prototype naming: write PROTOTYPE=CLASS with PROTOTYPE in "
                             f"1..{k if k is not None else 'K'}, e.g. --assign \"1=bg,2=fg\"")
        if name in CLASS_NAMES:
            cls = CLASS_NAMES[name]
        elif name.isdigit() and int(name) <= 255:
            cls = int(name)
        else:
            raise TowerError(f"unknown class '{value}' in '{item}': use bg, fg, none or a class number "
                             "(1 = background, 2.. = classes)")
        if proto in mapping and mapping[proto] != cls:
            raise TowerError(f"prototype {proto} is named twice ({mapping[proto]} and {cls}): name it once")
        mapping[proto] = cls
    if not any(mapping.values()):
        raise TowerError("the naming names no prototype: e.g. --assign \"1=bg,2=fg\"")
    return mapping


__all__ = ["Assignment", "PrototypeResult", "Prototypes", "assign_image", "class_margin", "find_prototypes",
           "fit_prototypes", "majority_mapping", "most_typical_image", "parse_mapping", "pseudo_labels"]
