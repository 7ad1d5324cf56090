"""bfloat16 autocast for CPU training: step time against float32, and Dice at the seed level (issue 16).

Fine-tunes the same segmenter from the same seed twice, once in float32 and once with `cpu_bf16` (bfloat16
autocast, only where the CPU computes it natively: AVX512-BF16 or AMX), alternating the two so both see the same
machine load. Reports the per-seed step-time ratio and the seed-level Dice comparison.

    python benchmarks/bench_bf16_train.py --dataset dsb2018 --labelled 2 --seeds 3 --steps 220 --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fewlabel import _images, _score, labelled_draw, load_split
from machine import cpu_name

from napari_tower.config import AcceleratorConfig, FinetuneConfig
from napari_tower.segment import finetune
from napari_tower.stats import compare
from napari_tower.train.engine import cpu_has_native_bf16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="dsb2018")
    parser.add_argument("--labelled", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=220)
    parser.add_argument("--max-test", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both arms run with the same)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not cpu_has_native_bf16():
        print("this CPU has no native bfloat16 (AVX512-BF16/AMX): cpu_bf16 is a no-op here", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "runs.jsonl"  # one line per finished run, so a stopped session keeps its runs
    split = load_split(args.dataset, args.max_test)
    runs = []
    for seed in range(args.seeds):
        picks = labelled_draw(split.n_train, args.labelled, seed)
        images, labels = _images([split.train[i][0] for i in picks]), [split.train[i][1][None] for i in picks]
        for bf16 in ((False, True) if seed % 2 == 0 else (True, False)):  # alternate the order
            cfg = FinetuneConfig(steps=args.steps, batch=8, seed=seed, device="cpu", val_every=0, checkpoint_every=0,
                                 accel=AcceleratorConfig(cpu_bf16=bf16))
            t = time.perf_counter()
            tuned = finetune(images, labels, cfg)
            seconds = time.perf_counter() - t
            scores = _score(split, tuned.checkpoint, "cpu")
            runs.append({"seed": seed, "bf16": bf16, "seconds": seconds, "scores": scores,
                         "mean": float(np.mean(scores))})
            print(f"seed {seed} {'bf16' if bf16 else 'fp32'}: {seconds:.1f} s, Dice {np.mean(scores):.4f}", flush=True)
            with partial.open("a") as f:
                f.write(json.dumps(runs[-1]) + "\n")
    by = {b: {r["seed"]: r for r in runs if r["bf16"] == b} for b in (False, True)}
    ratios = [by[True][s]["seconds"] / by[False][s]["seconds"] for s in by[False]]
    c = compare({s: r["scores"] for s, r in by[True].items()}, {s: r["scores"] for s, r in by[False].items()},
                names=("bf16", "fp32"))
    summary = {"dataset": args.dataset, "labelled": args.labelled, "steps": args.steps,
               "time_ratio_bf16_over_fp32": ratios, "median_ratio": float(np.median(ratios)),
               "dice_fp32": float(np.mean([r["mean"] for r in by[False].values()])),
               "dice_bf16": float(np.mean([r["mean"] for r in by[True].values()])), "compare": c.as_dict(),
               "cpu": cpu_name(), "torch": torch.__version__,
               "threads": args.threads}
    (args.out / "results.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
