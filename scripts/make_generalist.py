"""Recipe of the built-in generalist checkpoint: TOWER pretraining on the redistributable shared corpus.

    python scripts/make_generalist.py --out runs/generalist/pretrain.pt [--steps 2000] [--resume]
    python scripts/make_generalist.py --out /tmp/g/pretrain.pt --device cuda --batch 64 --minutes 4 \
        --package generalist.pt     # on a GPU: a time budget (the schedule follows the time), then the shipped file

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
from pack import load_pack

from napari_tower.config import DataConfig, ModelConfig, PretrainConfig
from napari_tower.data import from_array
from napari_tower.train import pretrain


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/generalist/pretrain.pt"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=0.0, help="train for this long instead of --steps")
    parser.add_argument("--lr", type=float, default=PretrainConfig.lr)
    parser.add_argument("--package", type=Path, help="also write the shippable float16 file here at the end")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--base", type=int, default=ModelConfig.base)
    parser.add_argument("--depth", type=int, default=ModelConfig.depth)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    args = parser.parse_args()

    packed = load_pack()  # a machine without ../shared (a lent GPU) reads the same corpus from a pack
    corpus = packed["corpus"] if packed else [(e.dataset, e.image.name, e.licence, e.image)
                                              for e in generalist_corpus()]
    images = [from_array((a.astype("float32") if packed else read_grayscale(a))[None], f"{d}/{f}", axes="ZYX")
              for d, f, _, a in corpus]
    cfg = PretrainConfig(method="tower", steps=args.steps, minutes=args.minutes, lr=args.lr, batch=args.batch,
                         seed=args.seed, device=args.device,
                         checkpoint_every=100, val_every=0, data=DataConfig(patch=args.patch),
                         model=ModelConfig(base=args.base, depth=args.depth))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    recipe = {"command": " ".join(sys.argv), "steps": args.steps, "minutes": args.minutes, "lr": args.lr,
              "batch": args.batch, "patch": args.patch,
              "base": args.base, "depth": args.depth, "seed": args.seed,
              "corpus": [{"dataset": d, "file": f, "licence": lic} for d, f, lic, _ in corpus]}
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
    if args.package and not result.last.stopped:
        import torch

        from napari_tower.generalist import package_generalist

        recipe.update(steps_done=result.last.step, seconds=round(time.perf_counter() - t0),
                      device=str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else "cpu")
        digest = package_generalist(result.checkpoint, args.package, recipe)
        print(f"packaged {args.package}: sha256 {digest}", flush=True)
    return 130 if result.last.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
