"""Recipe of the built-in generalist checkpoint: TOWER pretraining on the redistributable shared corpus.

    python scripts/make_generalist.py --out runs/generalist/pretrain.pt [--steps 2000] [--resume]

The corpus and its test-split exclusions are defined in benchmarks/corpus.py. Checkpoints are written every
100 steps; `--resume` continues an interrupted run on its own schedule (cosine decay over the original total).
The finished checkpoint is turned into the shipped file by `napari_tower.generalist.package_generalist`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from corpus import generalist_corpus, read_grayscale

from napari_tower.config import DataConfig, ModelConfig, PretrainConfig
from napari_tower.data import from_array
from napari_tower.train import pretrain


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/generalist/pretrain.pt"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--base", type=int, default=ModelConfig.base)
    parser.add_argument("--depth", type=int, default=ModelConfig.depth)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    args = parser.parse_args()

    corpus = generalist_corpus()
    images = [from_array(read_grayscale(e.image)[None], f"{e.dataset}/{e.image.name}", axes="ZYX") for e in corpus]
    cfg = PretrainConfig(method="tower", steps=args.steps, batch=args.batch, seed=args.seed, device=args.device,
                         checkpoint_every=100, val_every=0, data=DataConfig(patch=args.patch),
                         model=ModelConfig(base=args.base, depth=args.depth))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    recipe = {"command": " ".join(sys.argv), "steps": args.steps, "batch": args.batch, "patch": args.patch,
              "base": args.base, "depth": args.depth, "seed": args.seed,
              "corpus": [{"dataset": e.dataset, "file": e.image.name, "licence": e.licence} for e in corpus]}
    args.out.with_suffix(".recipe.json").write_text(json.dumps(recipe, indent=1))

    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    t0 = time.perf_counter()

    def progress(p) -> None:
        if p.step % 25 == 0 or p.done:
            losses = " ".join(f"{k}={v:.4f}" for k, v in p.losses.items())
            print(f"step {p.step}/{p.total} {losses} {p.patches_per_s:.1f} patches/s "
                  f"elapsed {time.perf_counter() - t0:.0f}s ETA {p.eta_s:.0f}s", flush=True)

    result = pretrain(images, cfg, args.out, progress, stop.is_set, args.out if args.resume else None)
    print(f"{'stopped' if result.last.stopped else 'finished'} at step {result.last.step}: {args.out}", flush=True)
    return 130 if result.last.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
