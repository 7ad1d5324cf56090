"""The shared data sets as benchmark splits and as the generalist's pretraining corpus.

One place defines which images are held out for testing, so the generalist checkpoint never sees an image the
few-label benchmark scores it on. Test splits: DSB2018 by a hash of the image id (20%), Usiigaci by its source's
own `val` split, S-BIAD634 images 3 and 4; DSB2018 stage-1 test is never in the corpus (its benchmark split is a
hash half). The corpus takes only sets whose licence
allows redistributing derived weights (CC0, CC BY, MIT): ISBI 2012 (no data licence) and the ssTEM VNC set
(CC BY-NC-SA) are evaluation-only.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("NAPARI_TOWER_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
REDISTRIBUTABLE = ("CC0", "CC BY 4.0", "MIT")
EVAL_ONLY = ("dsb2018_stage1_test",)  # held out of the corpus whole, so it tests generalisation to unseen images


@dataclass(frozen=True)
class Entry:
    """One image of the corpus, with its data set, licence and (for labelled sets) its mask."""

    dataset: str
    image: Path
    mask: Path | None
    licence: str
    test: bool


def _hash_share(name: str) -> float:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def entries(shared: Path = SHARED) -> list[Entry]:
    """Every image of the labelled sets and the unlabelled set, marked test or not."""
    out: list[Entry] = []
    d = shared / "dsb2018"
    for row in _rows(d):
        out.append(Entry("dsb2018", d / "images" / f"{row['id']}.tif", d / "masks" / f"{row['id']}.tif", "CC0",
                         _hash_share(row["id"]) < 0.2))
    d = shared / "dsb2018_stage1_test"
    if d.exists():  # evaluation only (never in the corpus): a seeded half is the training pool, half the test
        for row in _rows(d):
            out.append(Entry("dsb2018_stage1_test", d / "images" / f"{row['id']}.tif", d / "masks" / f"{row['id']}.tif",
                             "CC0", _hash_share(row["id"]) < 0.5))
    d = shared / "usiigaci_phase"
    for row in _rows(d):
        out.append(Entry("usiigaci_phase", d / "images" / row["file"], d / "masks" / row["file"], "MIT",
                         row["source_split"] == "val"))
    d = shared / "sbiad634_ganglioneuroblastoma"
    for row in _rows(d):
        labelled = row["labelled"] == "1"
        out.append(Entry("sbiad634_ganglioneuroblastoma", d / "images" / row["file"],
                         d / "masks" / row["file"] if labelled else None, "CC BY 4.0",
                         row["file"] in ("Ganglioneuroblastoma_3.tif", "Ganglioneuroblastoma_4.tif")))
    d = shared / "bian_misc_unlabelled"
    for row in _rows(d):
        out.append(Entry("bian_misc_unlabelled", d / "images" / row["file"], None, row["licence"], False))
    return out


def generalist_corpus(shared: Path = SHARED, dsb_images: int = 200, seed: int = 0) -> list[Entry]:
    """The pretraining corpus: redistributable, never a test image; DSB2018 subsampled so no set dominates."""
    pool = [e for e in entries(shared) if not e.test and e.licence in REDISTRIBUTABLE and e.dataset not in EVAL_ONLY]
    dsb = [e for e in pool if e.dataset == "dsb2018"]
    keep = set(np.random.default_rng(seed).permutation(len(dsb))[:dsb_images].tolist())
    return [e for e in pool if e.dataset != "dsb2018"] + [e for i, e in enumerate(dsb) if i in keep]


def read_grayscale(path: Path) -> np.ndarray:
    """A 2-D float32 plane: colour images become their luminance (the generalist is single-channel)."""
    import tifffile

    a = np.asarray(tifffile.imread(path))
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif a.ndim == 3:
        a = a[0]
    return a.astype(np.float32)
