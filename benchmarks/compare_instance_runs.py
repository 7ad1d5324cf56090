"""Two bench_instances.py runs of the same cells against each other: object F1, AP and Dice, cell by cell.

    python benchmarks/compare_instance_runs.py NEW/results.json OLD/results.json [OLD2/results.json ...] \
        --arm capped [--names new old] [--out F.md]

For a code change that leaves training alone (training is deterministic on one CPU, so both runs hold the same
models) this reads the change's effect on each (data set, label budget) cell: per-image scores are paired by
seed and compared with `napari_tower.stats.compare` (seed-level t-test and a hierarchical bootstrap, seeds then
images). Later OLD files fill cells the earlier ones lack. Also pooled over every cell: the mean difference of
seed means, and how many (cell, seed) pairs moved up, down or not at all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_tower.stats import compare

METRICS = ("f1", "ap", "dice")


def cells(paths: list[Path], arm: str) -> dict[tuple[str, str], dict[int, dict[str, list[float]]]]:
    """{(data set, budget): {seed: {metric: per-image scores}}} of `arm`; earlier files win."""
    out: dict[tuple[str, str], dict[int, dict[str, list[float]]]] = {}
    for path in reversed(paths):
        for run in json.loads(path.read_text())["runs"]:
            if run["arm"] == arm:
                out.setdefault((run["dataset"], str(run["budget"])), {})[int(run["seed"])] = {
                    m: [float(v) for v in run[m]] for m in METRICS}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("new", type=Path)
    ap.add_argument("old", type=Path, nargs="+")
    ap.add_argument("--arm", default="capped")
    ap.add_argument("--names", nargs=2, default=("new", "old"))
    ap.add_argument("--out", type=Path, default=None, help="markdown table (printed as well)")
    args = ap.parse_args(argv)
    new, old = cells([args.new], args.arm), cells(list(args.old), args.arm)
    a, b = args.names
    lines = [f"| data set | labelled | seeds | F1 {a} | F1 {b} | Δ F1 (points) [95% CI], p | AP {a} / {b} | "
             f"Dice {a} / {b} | Δ Dice (points) |", "|---|---|---|---|---|---|---|---|---|"]
    diffs: dict[str, list[float]] = {m: [] for m in METRICS}
    for key in sorted(set(new) & set(old)):
        seeds = sorted(set(new[key]) & set(old[key]))
        if not seeds:
            continue
        row = {}
        for m in METRICS:
            x = {s: new[key][s][m] for s in seeds}
            y = {s: old[key][s][m] for s in seeds}
            row[m] = (compare(x, y, (a, b)) if len(seeds) > 1 else None,
                      float(np.mean([np.mean(x[s]) for s in seeds])), float(np.mean([np.mean(y[s]) for s in seeds])))
            diffs[m] += [float(np.mean(x[s]) - np.mean(y[s])) for s in seeds]
        c, f1_new, f1_old = row["f1"]
        delta = (f"{100 * c.mean_diff:+.1f} [{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}], p {c.paired_t_p:.3g}"
                 if c is not None else f"{100 * (f1_new - f1_old):+.1f} (one seed)")
        lines.append(f"| {key[0]} | {key[1]} | {len(seeds)} | {f1_new:.3f} | {f1_old:.3f} | {delta} | "
                     f"{row['ap'][1]:.3f} / {row['ap'][2]:.3f} | {row['dice'][1]:.3f} / {row['dice'][2]:.3f} | "
                     f"{100 * (row['dice'][1] - row['dice'][2]):+.1f} |")
    f1 = np.array(diffs["f1"])
    lines.append("")
    lines.append(f"Over {f1.size} (cell, seed) pairs: mean Δ F1 {100 * f1.mean():+.2f} points "
                 f"({(f1 > 1e-9).sum()} up, {(f1 < -1e-9).sum()} down, {(np.abs(f1) <= 1e-9).sum()} unchanged); "
                 f"mean Δ Dice {100 * np.mean(diffs['dice']):+.2f}, Δ AP {100 * np.mean(diffs['ap']):+.2f} points.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
