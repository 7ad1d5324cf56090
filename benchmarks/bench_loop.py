"""The correct-and-retrain loop, simulated: do suggested regions beat random ones?

A simulated user opens a few training images of one size (`--pool`, drawn by seed: a stack, as a microscope
gives), annotates one 128 x 128 tile (drawn by seed, the same for every strategy) and fine-tunes on the stack with
the loss on that tile only (from the built-in generalist by default). Then, each round, the model predicts the
stack, the user corrects one `--region` x `--region` region from the ground truth (the "suggested" strategy takes
the most uncertain region not yet corrected, `suggest_region` on the entropy or test-time-flip map; "random" draws
one among those not yet corrected) and the model is retrained with the widget's own Qt-free
`segment.retrain.retrain` on the stack, learning from every region corrected so far (`reviewed`), the pixels the
user changed weighing `--edit-weight` times more. Training sees whole planes, as in the widget: the model's
stored intensity scaling is the stack's, not a tile's, and its patches are drawn around the corrected regions.
After the first tile and after each round the model is scored on held-out images (foreground Dice); scoring
time is not counted in a round's seconds.

Held-out images: where IMAGES_DIR is a shared data set of benchmarks/corpus.py, its test split (DSB2018: 20% by a
hash of the image id; Usiigaci: the source's `val` split); elsewhere the same hash rule on the file name. Masks are
matched to images by file name. Colour images become their luminance (the generalist is single-channel);
`--grayscale-only` keeps the images an `index.csv` beside the images folder marks grayscale (DSB2018: drops the
colour brightfield and stained tissue images, as the project's other DSB benchmarks do); `--bright-objects` keeps
the images whose objects are brighter than their background (fluorescence), so that the held-out images are of
the modality the simulated user works on.

The simulated user accepts nothing it did not correct: a retrain learns from the corrected regions only, not
from the uncorrected rest of the prediction. `--accept-rest` retrains as the widget's Retrain button does: every
pixel of the open planes counts, the uncorrected ones with the prediction's labels.

    python benchmarks/bench_loop.py --data ../shared/data/dsb2018/images --labels ../shared/data/dsb2018/masks \
        --rounds 5 --seeds 3 --strategy both --out docs/benchmarks/loop/dsb2018

Writes DIR/results.json: {"meta": ..., "records": [{strategy, seed, round, dice, seconds, labelled_pixels, ...}]}
and DIR/summary.md (mean Dice per round and strategy, seed-level comparisons from `napari_tower.stats.compare`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig, RetrainConfig
from napari_tower.data import from_array
from napari_tower.errors import TowerError
from napari_tower.segment import Predictor, finetune
from napari_tower.segment.metrics import dice
from napari_tower.segment.retrain import retrain
from napari_tower.segment.uncertainty import (
    Region,
    candidate_regions,
    entropy_map,
    flip_disagreement,
    random_region,
    suggest_region,
)
from napari_tower.stats import compare

STRATEGIES = ("suggested", "random")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


@dataclass
class Pair:
    name: str
    image: np.ndarray  # (Y, X) float32
    truth: np.ndarray  # (Y, X) int32 instance ids (0 = background)


def read_plane(path: Path) -> np.ndarray:
    """A 2-D float32 plane: colour becomes luminance, a stack its first plane."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        a = np.asarray(tifffile.imread(path))
    else:
        from skimage.io import imread

        a = np.asarray(imread(path))
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif a.ndim == 3:
        a = a[0]
    return a.astype(np.float32)


def _hash_test(name: str) -> bool:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < 0.2


def held_out(images: Path) -> dict[str, bool]:
    """File name -> held out, from benchmarks/corpus.py where IMAGES_DIR is one of its data sets."""
    try:
        from corpus import entries

        return {e.image.name: e.test for e in entries(images.resolve().parents[1])
                if e.image.parent.resolve() == images.resolve()}
    except (OSError, KeyError, ValueError):
        return {}


def grayscale_names(images: Path) -> set[str] | None:
    """Stems of the images an index.csv beside IMAGES_DIR marks grayscale (column `grayscale`), or None."""
    import csv

    index = images.parent / "index.csv"
    if not index.exists():
        return None
    with index.open() as f:
        rows = list(csv.DictReader(f))
    if not rows or "grayscale" not in rows[0]:
        return None
    return {r.get("id", "") for r in rows if r["grayscale"] == "1"}


def bright_objects(pair: Pair) -> bool:
    """Whether the objects are brighter than the background (fluorescence), by their mean intensities."""
    fg = pair.truth > 0
    return bool(fg.any() and (~fg).any() and pair.image[fg].mean() > pair.image[~fg].mean())


def load_pairs(images: Path, masks: Path, max_test: int, test_names: Path | None = None,
               grayscale_only: bool = False, bright_only: bool = False) -> tuple[list[Pair], list[Pair]]:
    """(training pool, held-out test images) of two folders of same-named files.

    test_names: a file listing the held-out file names, one a line (default: see the module docstring).
    grayscale_only: keep only the images index.csv marks grayscale.
    bright_only: keep only the images whose objects are brighter than their background (`bright_objects`).
    """
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if grayscale_only:
        keep = grayscale_names(images)
        if keep is None:
            raise SystemExit(f"error: --grayscale-only needs an index.csv with `id` and `grayscale` columns beside "
                             f"{images}; drop the option")
        files = [f for f in files if f.stem in keep]
    if test_names is not None:
        listed = set(test_names.read_text().split())
        known = {f.name: f.name in listed for f in files}
    else:
        known = held_out(images)
    train, test = [], []
    for f in files:
        m = masks / f.name
        if not m.exists():
            continue
        is_test = known.get(f.name, _hash_test(f.stem))
        if is_test and len(test) >= max_test:
            continue
        pair = Pair(f.stem, read_plane(f), read_plane(m).astype(np.int32))
        if bright_only and not bright_objects(pair):
            continue
        (test if is_test else train).append(pair)
    if not train or not test:
        raise SystemExit(f"error: {images} and {masks} give {len(train)} training and {len(test)} held-out "
                         "same-named image/mask pairs; both must be at least 1")
    return train, test


def open_images(train: list[Pair], n: int, seed: int) -> list[Pair]:
    """The (at most) `n` training images the simulated user opens with `seed`: the first of a ranking by a seeded
    hash of the names and the next ones of its size (one stack, as a microscope gives), so the choice does not
    depend on which other images the folder holds."""
    rank = sorted(train, key=lambda p: hashlib.sha1(f"{seed}:{p.name}".encode()).hexdigest())
    same = [p for p in rank if p.image.shape == rank[0].image.shape]
    return sorted(same[:n], key=lambda p: p.name)


def first_tile(pool: list[Pair], size: int, rng: np.random.Generator) -> Region:
    """The tile a user annotates first: drawn among those at least 10% objects (a user starts where cells are)."""
    tiles = [r for p, pair in enumerate(pool) for r in candidate_regions(pair.truth.shape, size, p)]
    share = [float((pool[r.plane].truth[r.slices()] > 0).mean()) for r in tiles]
    good = [r for r, s in zip(tiles, share) if s >= 0.1] or [r for r, s in zip(tiles, share) if s > 0]
    if not good:
        raise SystemExit("error: the open training images hold no object: check the masks folder")
    return good[int(rng.integers(len(good)))]


def score(model, test: list[Pair], device: str) -> list[float]:
    predictor = Predictor(model, PredictConfig(device=device, instances=False))
    out = []
    for pair in test:
        pred = predictor.predict(from_array(pair.image[None], pair.name, axes="ZYX")).labels[0]
        out.append(dice(pred > 0, pair.truth > 0))
    return out


def uncertainty_maps(model, pool: list[Pair], method: str, device: str) -> list[np.ndarray]:
    """The current model's uncertainty on each open image (what the widget's Next region computes)."""
    predictor = Predictor(model, PredictConfig(device=device, instances=False))
    maps = []
    for pair in pool:
        image = from_array(pair.image[None], pair.name, axes="ZYX")
        norm = predictor.normalisation_for(image)
        if method == "flips":
            maps.append(flip_disagreement(lambda plane, norm=norm: predictor.probabilities(plane, norm), image.data[0],
                                          predictor.target))
        else:
            maps.append(entropy_map(predictor.probabilities(image.data[0], norm), predictor.target))
    return maps


def fg_aligned_previous(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The prediction as the user's edits see it: equal to the truth wherever the foreground decision agrees.

    Predicted and true object ids never match, so comparing ids would count every object pixel as an edit;
    the user only changes the pixels whose foreground/background call was wrong.
    """
    agree = (prediction > 0) == (truth > 0)
    return np.where(agree, truth, prediction).astype(np.int32)


def run_strategy(strategy: str, seed: int, pool: list[Pair], test: list[Pair], first: Region, args,
                 init, emit) -> None:
    torch.manual_seed(seed)
    fcfg = FinetuneConfig(steps=args.first_steps, batch=args.batch, lr=args.lr, seed=seed, device=args.device,
                          val_fraction=0.0, val_every=0, checkpoint_every=0, edit_weight=args.edit_weight,
                          target="instance", data=DataConfig(patch=args.patch), model=ModelConfig())
    pcfg = PredictConfig(device=args.device, instances=False)
    stack = from_array(np.stack([p.image for p in pool]), "open images", axes="ZYX")
    truth = np.stack([p.truth for p in pool])
    reviewed = np.zeros(truth.shape, np.uint8)  # the regions annotated or corrected so far
    corrected: list[Region] = [first]
    reviewed[first.plane][first.slices()] = 1
    t0, c0 = time.perf_counter(), time.process_time()
    # The first tile is annotated from scratch: the truth's ids (whole objects) with the loss on the tile only.
    model = finetune([stack], [truth], fcfg, init=init, weights=[reviewed.astype(np.float32)]).checkpoint
    seconds = (time.perf_counter() - t0, time.process_time() - c0)
    emit(strategy, seed, 0, score(model, test, args.device), seconds, corrected, 0)
    rng = np.random.default_rng([seed, 1])
    for rnd in range(1, args.rounds + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        if strategy == "suggested":
            maps = uncertainty_maps(model, pool, args.uncertainty, args.device)
            region = suggest_region(maps, args.region, corrected)
        else:
            region = random_region([p.image.shape for p in pool], args.region, corrected, rng)
        if region is None:
            break
        predicted = Predictor(model, pcfg).predict(stack).labels  # the prediction layer the user corrects
        previous = np.stack([fg_aligned_previous(p, t) for p, t in zip(predicted, truth)])
        fixed = previous.copy()
        corrected.append(region)
        reviewed[region.plane][region.slices()] = 1
        fixed[reviewed > 0] = truth[reviewed > 0]
        rcfg = RetrainConfig(steps=args.steps, edit_weight=args.edit_weight, seed=seed * 1000 + rnd, device=args.device,
                             lr_scale=args.retrain_lr_scale)
        fcfg.steps = args.steps
        try:
            result = retrain(model, stack, previous, fixed, rcfg, finetune_cfg=fcfg, predict_cfg=pcfg,
                             reviewed=None if args.accept_rest else reviewed)
            model, edited = result.model, result.edited
        except TowerError as exc:  # the model already matched every corrected pixel: nothing to learn
            if "no corrections" not in str(exc):
                raise
            edited = 0
        seconds = (time.perf_counter() - t0, time.process_time() - c0)
        emit(strategy, seed, rnd, score(model, test, args.device), seconds, corrected, edited)


def summarise(records: list[dict], out: Path) -> list[dict]:
    """Mean Dice per strategy and round; suggested vs random at the seed level per round; rounds to a target."""
    rounds = sorted({r["round"] for r in records})
    lines = ["| round | labelled pixels | suggested Dice | random Dice | Δ (points) | 95% CI | paired t p | verdict | "
             "s/round (suggested, random) |", "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for rnd in rounds:
        group = [r for r in records if r["round"] == rnd]
        by = {s: {r["seed"]: r["scores"] for r in group if r["strategy"] == s} for s in STRATEGIES}
        means = {s: float(np.mean([np.mean(v) for v in by[s].values()])) if by[s] else float("nan")
                 for s in STRATEGIES}
        secs = {s: float(np.mean([r["seconds"] for r in group if r["strategy"] == s] or [np.nan]))
                for s in STRATEGIES}
        row = {"round": rnd, "labelled_pixels": group[0]["labelled_pixels"], **{f"{s}_dice": means[s]
                                                                               for s in STRATEGIES}}
        cells = ["", "", "", ""]
        if by["suggested"] and by["random"] and len(set(by["suggested"]) & set(by["random"])) >= 2:
            c = compare(by["suggested"], by["random"], names=("suggested", "random"))
            row["compare"] = c.as_dict()
            cells = [f"{c.mean_diff * 100:+.2f}", f"[{c.ci_low * 100:+.2f}, {c.ci_high * 100:+.2f}]",
                     f"{c.paired_t_p:.3g}", c.verdict.split(" (")[0]]
        rows.append(row)
        lines.append(f"| {rnd} | {row['labelled_pixels']} | {means['suggested']:.4f} | {means['random']:.4f} | "
                     + " | ".join(cells) + f" | {secs['suggested']:.1f}, {secs['random']:.1f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def merge(runs: list[Path], out: Path) -> int:
    """Combine the records of runs made in parallel (e.g. one process per seed) and summarise them."""
    metas, records = [], []
    for run in runs:
        data = json.loads((run / "results.json").read_text())
        metas.append(data["meta"])
        records += data["records"]
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(records, out)
    (out / "results.json").write_text(json.dumps({"meta": metas, "records": records, "summary": summary}, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of images")
    parser.add_argument("--labels", type=Path, required=True, help="folder of same-named instance (or binary) masks")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategy", choices=("suggested", "random", "both"), default="both")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pool", type=int, default=4, help="training images the simulated user has open")
    parser.add_argument("--region", type=int, default=128, help="side of the first tile and of each correction")
    parser.add_argument("--uncertainty", choices=("entropy", "flips"), default="entropy")
    parser.add_argument("--init", default="generalist", help="generalist, scratch or a pretrained checkpoint")
    parser.add_argument("--first-steps", type=int, default=100, help="fine-tuning steps on the first tile")
    parser.add_argument("--steps", type=int, default=50, help="retrain steps per round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=64, help="training patch side (at most --region)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--edit-weight", type=float, default=5.0)
    parser.add_argument("--accept-rest", action="store_true",
                        help="retrain as the widget does: the uncorrected rest of the prediction counts as labels")
    parser.add_argument("--retrain-lr-scale", type=float, default=RetrainConfig().lr_scale,
                        help="a retrain's learning rate over the fine-tuning rate (RetrainConfig.lr_scale)")
    parser.add_argument("--max-test", type=int, default=30, help="held-out images scored (the first by name)")
    parser.add_argument("--test-names", type=Path, help="file listing the held-out image file names, one a line")
    parser.add_argument("--grayscale-only", action="store_true",
                        help="only the images an index.csv beside IMAGES_DIR marks grayscale")
    parser.add_argument("--bright-objects", action="store_true",
                        help="only the images whose objects are brighter than their background (fluorescence)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (seconds are only meaningful on one device)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--merge", type=Path, nargs="+", help="only combine these runs' results.json into --out")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    torch.set_num_threads(args.threads)
    strategies = STRATEGIES if args.strategy == "both" else (args.strategy,)
    init = None
    if args.init == "generalist":
        from napari_tower.generalist import generalist_path

        init = str(generalist_path())
    elif args.init != "scratch":
        init = args.init
    train, test = load_pairs(args.data, args.labels, args.max_test, args.test_names, args.grayscale_only,
                              args.bright_objects)
    train = [p for p in train if min(p.image.shape) >= args.region]
    args.out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    meta = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "cpu": cpu_name(), "torch": torch.__version__,
            "n_train_pool": len(train), "n_test": len(test)}

    def emit(strategy, seed, rnd, scores, seconds, corrected, edited):
        seconds, cpu_seconds = seconds
        rec = {"strategy": strategy, "seed": seed, "round": rnd, "dice": float(np.mean(scores)), "seconds": seconds,
               "cpu_seconds": cpu_seconds,
               "labelled_pixels": int(sum(r.size * r.size for r in corrected)), "edited_pixels": int(edited),
               "regions": [asdict(r) for r in corrected], "scores": scores}
        records.append(rec)
        print(f"{strategy:<9} seed {seed} round {rnd}: Dice {rec['dice']:.4f}, {seconds:.1f} s, "
              f"{cpu_seconds:.1f} s CPU, {rec['labelled_pixels']} labelled px", flush=True)
        (args.out / "results.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))

    for seed in range(args.first_seed, args.first_seed + args.seeds):
        rng = np.random.default_rng([seed, 0])
        pool = open_images(train, args.pool, seed)
        first = first_tile(pool, args.region, rng)
        for strategy in strategies:
            run_strategy(strategy, seed, pool, test, first, args, init, emit)
    meta["pool_names"] = "per seed, see regions"
    summary = summarise(records, args.out)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "records": records, "summary": summary},
                                                      indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
