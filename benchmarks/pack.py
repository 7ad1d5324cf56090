"""A compact, portable copy of the benchmark splits and the generalist corpus, for a machine without ../shared.

The few-label benchmark and the generalist recipe read the shared data through `load_split` and
`generalist_corpus`; on a lent GPU machine only the repository travels (64 MiB). This packs what those runs need
into one lzma-compressed pickle of uint8/uint16 planes: each set's test images (at most `max_test`), the training
images any (seed, label count) draws, `extra` more training images for the unlabelled pool, and the corpus.
`NAPARI_TOWER_PACK=FILE` makes the readers use it; the draws and splits are the same as from the full data.

    python benchmarks/pack.py --out .devdata/pack.xz --seeds 5 --labelled 1 2 [--parts splits corpus]
"""

from __future__ import annotations

import argparse
import lzma
import os
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ENV = "NAPARI_TOWER_PACK"


def compact(a: np.ndarray) -> np.ndarray:
    """The smallest integer type that holds `a` (images are read as float32 from 8- or 16-bit files; colour
    images' luminance is rounded to whole grey levels, which does not change a segmentation)."""
    if np.issubdtype(a.dtype, np.floating):
        a = np.round(np.nan_to_num(a))
    lo, hi = float(a.min()), float(a.max())
    for t in (np.uint8, np.uint16, np.int32):
        if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
            return a.astype(t)
    return a.astype(np.float32)


def draws(n_train: int, ks: list[int], seeds: int) -> set[int]:
    from bench_fewlabel import labelled_draw

    return {i for k in ks for s in range(seeds) for i in labelled_draw(n_train, k, s)}


def main() -> int:
    from bench_fewlabel import extra_unlabelled, load_split
    from corpus import generalist_corpus, read_grayscale

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=["dsb2018", "dsb2018_stage1_test", "usiigaci_phase",
                                                          "sbiad634_ganglioneuroblastoma", "sstem_drosophila_vnc",
                                                          "isbi2012_em"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--labelled", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--max-test", type=int, default=20)
    parser.add_argument("--extra", type=int, default=8, help="unlabelled training images beside the drawn ones")
    parser.add_argument("--parts", nargs="+", choices=("splits", "corpus"), default=["splits", "corpus"])
    args = parser.parse_args()
    if os.environ.get(ENV):
        parser.error(f"unset {ENV}: packing reads the full shared data")
    pack: dict = {"splits": {}, "corpus": []}
    for name in args.datasets if "splits" in args.parts else []:
        split = load_split(name, args.max_test)
        n = len(split.train)
        labelled = draws(n, [k for k in args.labelled if k <= n], args.seeds)
        keep = sorted(labelled | set(extra_unlabelled(n, args.extra)))
        pack["splits"][name] = {  # images of the unlabelled pool travel without their labels
            "n_train": n, "membrane": split.membrane,
            "train": {i: (compact(split.train[i][0]), compact(split.train[i][1]) if i in labelled else None)
                      for i in keep},
            "test": [(compact(a), compact(b)) for a, b in split.test]}
        print(f"{name}: {n} training images, {len(keep)} kept, {len(split.test)} test", flush=True)
    if "corpus" in args.parts:
        corpus = generalist_corpus()
        pack["corpus"] = [(e.dataset, e.image.name, e.licence, compact(read_grayscale(e.image))) for e in corpus]
        print(f"corpus: {len(pack['corpus'])} images", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(args.out, "wb", preset=6) as fh:
        pickle.dump(dedupe(pack), fh, protocol=4)
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB")
    return 0


_LOADED: dict[str, dict] = {}


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(a.tobytes() + str(a.shape).encode()).hexdigest()


def dedupe(pack: dict) -> dict:
    """Split images that are also corpus images travel once: as a ("corpus", index) reference."""
    where = {_digest(a): i for i, (_, _, _, a) in enumerate(pack["corpus"])}

    def ref(a):
        return ("corpus", where[_digest(a)]) if isinstance(a, np.ndarray) and _digest(a) in where else a

    for split in pack["splits"].values():
        split["train"] = {i: (ref(a), b) for i, (a, b) in split["train"].items()}
        split["test"] = [(ref(a), b) for a, b in split["test"]]
    return pack


def _resolve(pack: dict) -> dict:
    def get(a):
        return pack["corpus"][a[1]][3] if isinstance(a, tuple) else a

    for split in pack.get("splits", {}).values():
        split["train"] = {i: (get(a), b) for i, (a, b) in split["train"].items()}
        split["test"] = [(get(a), b) for a, b in split["test"]]
    return pack


def load_pack() -> dict | None:
    """The pack named by NAPARI_TOWER_PACK (read once per process), or None."""
    path = os.environ.get(ENV)
    if not path:
        return None
    if path not in _LOADED:
        with lzma.open(path, "rb") as fh:
            _LOADED[path] = _resolve(pickle.load(fh))
    return _LOADED[path]


if __name__ == "__main__":
    sys.exit(main())
