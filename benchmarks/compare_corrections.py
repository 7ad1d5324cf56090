"""Tables of `bench_density_shift.py --correct` runs: the other sparse frames before and after correcting one.

    python benchmarks/compare_corrections.py --arm old before.json --arm replay after-a.json after-b.json \
        [--base old] [--out table.md]

Per set and arm: foreground Dice of the frames left for scoring (mean over seeds of each seed's mean) before the
first correction round and after the last, the worst predicted/true foreground share over those frames and
seeds after the last round (either direction), Otsu's Dice on the same frames, and seed-level comparisons
(`napari_tower.stats.compare`): after against before within the arm, and each arm's after against the base arm's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_tower.stats import compare


def load(files: list[Path]) -> dict[str, dict[int, dict]]:
    """{set: {seed: corrections record}} from one arm's result files."""
    out: dict[str, dict[int, dict]] = {}
    for f in files:
        for run in json.loads(Path(f).read_text())["runs"]:
            if run.get("corrections"):
                out.setdefault(run["set"], {})[run["seed"]] = run["corrections"]
    return out


def seed_mean(per_seed: dict[int, list[float]]) -> float:
    return float(np.mean([np.mean(v) for v in per_seed.values()]))


def worst(ratios: list[float]) -> float:
    return max(max(r, 1 / max(r, 1e-9)) for r in ratios)


def cell(c) -> str:
    return (f"{c.mean_diff * 100:+.1f} [{c.ci_low * 100:+.1f}, {c.ci_high * 100:+.1f}], p {c.paired_t_p:.2g}"
            if c.n_seeds >= 2 else f"{c.mean_diff * 100:+.1f} (one seed)")


def table(arms: dict[str, dict[str, dict[int, dict]]], base: str | None) -> str:
    lines = ["| set | arm | seeds | Dice before | Dice after | worst share after | Otsu | after - before (points) "
             "| after - base arm (points) |", "|---|---|---|---|---|---|---|---|---|"]
    sets = sorted({s for arm in arms.values() for s in arm})
    for name in sets:
        for arm, data in arms.items():
            runs = data.get(name)
            if not runs:
                continue
            before = {s: r["rounds"][0]["dice"] for s, r in runs.items()}
            after = {s: r["rounds"][-1]["dice"] for s, r in runs.items()}
            share = max(worst(r["rounds"][-1]["share_ratio"]) for r in runs.values())
            otsu = float(np.mean([np.mean(r["otsu_dice"]) for r in runs.values()]))
            within = cell(compare(after, before, names=("after", "before")))
            versus = ""
            if base and arm != base and name in arms[base]:
                other = {s: r["rounds"][-1]["dice"] for s, r in arms[base][name].items()}
                versus = cell(compare(after, other, names=(arm, base)))
            shown = "an empty frame" if share > 1e6 else f"{share:.2f}x"
            lines.append(f"| {name} | {arm} | {len(runs)} | {seed_mean(before):.3f} | {seed_mean(after):.3f} | "
                         f"{shown} | {otsu:.3f} | {within} | {versus} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", nargs="+", action="append", required=True, metavar=("NAME", "FILE"),
                    help="an arm's name and its result files (repeat for each arm)")
    ap.add_argument("--base", help="the arm the others are compared with")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args()
    arms = {a[0]: load([Path(f) for f in a[1:]]) for a in args.arm}
    text = table(arms, args.base)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
