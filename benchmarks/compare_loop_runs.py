"""Two bench_loop.py runs of the same seeds against each other: final Dice and how much Dice swings per round.

    python benchmarks/compare_loop_runs.py A/results.json B/results.json [--names A B] [--out F.json]

Per seed (both strategies pooled into the seed's mean, so a seed counts once): Dice after the last round, the mean
absolute change of held-out Dice from one retrain round to the next (rounds 1..last), and the worst drop between
two rounds. Compared at the seed level with `napari_tower.stats.compare` (paired over seeds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_tower.stats import compare


def per_seed(path: Path) -> dict[str, dict[int, list[float]]]:
    """{measure: {seed: [value per strategy]}} of one run."""
    curves: dict[tuple[str, int], dict[int, float]] = {}
    for rec in json.loads(path.read_text())["records"]:
        curves.setdefault((rec["strategy"], rec["seed"]), {})[rec["round"]] = rec["dice"]
    out: dict[str, dict[int, list[float]]] = {"final_dice": {}, "mean_abs_change": {}, "worst_drop": {}}
    for (_, seed), curve in curves.items():
        rounds = sorted(curve)
        dice = [curve[r] for r in rounds]
        changes = np.diff(dice[1:]) if len(dice) > 2 else np.diff(dice)
        out["final_dice"].setdefault(seed, []).append(dice[-1])
        out["mean_abs_change"].setdefault(seed, []).append(float(np.mean(np.abs(changes))))
        out["worst_drop"].setdefault(seed, []).append(float(min(0.0, np.diff(dice).min())))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--names", nargs=2, default=["A", "B"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    a, b = per_seed(args.a), per_seed(args.b)
    rows = []
    print(f"| measure | {args.names[0]} | {args.names[1]} | Δ | 95% CI | paired t p | verdict |")
    print("|---|---|---|---|---|---|---|")
    for measure in a:
        c = compare(a[measure], b[measure], names=tuple(args.names))
        ma = float(np.mean([np.mean(v) for v in a[measure].values()]))
        mb = float(np.mean([np.mean(v) for v in b[measure].values()]))
        rows.append({"measure": measure, args.names[0]: ma, args.names[1]: mb, "compare": c.as_dict(),
                     "per_seed": {args.names[0]: a[measure], args.names[1]: b[measure]}})
        print(f"| {measure} | {ma:.4f} | {mb:.4f} | {c.mean_diff:+.4f} | [{c.ci_low:+.4f}, {c.ci_high:+.4f}] | "
              f"{c.paired_t_p:.3g} | {c.verdict.split(' (')[0]} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
