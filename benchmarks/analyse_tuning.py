"""Shape-head post-processing tuning rules compared on stored runs, without retraining (issue 20).

`bench_instances.py` stores, for every shape-head run, each grid point's pooled F1 on the labelled images (what
tuning sees) and its F1 on every test image. This script replays tuning rules on that record:

- first:   the best training F1, ties to the earliest grid point (the rule before session 13);
- middle:  the best training F1, ties to the middle of the tied range (`choose_postprocess`, the product's rule);
- middle_t: the middle rule for the seed threshold only, the smallest tied minimum size (which part gains);
- default: no tuning, the head's default parameters;
- oracle:  the grid point with the best mean test F1 (an upper bound: it looks at the test images).

Rules are compared at the seed level (`napari_tower.stats.compare`), and against boundary + watershed runs
from other results files (`--boundary`), matched by data set, budget and seed. `--reference` results files
of the same arm from earlier code check that training reproduced: their F1 must equal the `first` rule's.

    python benchmarks/analyse_tuning.py docs/benchmarks/instances-300-tuning/results.json \
        --boundary docs/benchmarks/instances-300-jitter/results.json \
        docs/benchmarks/instances-300-budgets/results.json --out docs/benchmarks/instances-300-tuning/rules.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_tower.segment.shape_heads import DEFAULT_POSTPROCESS
from napari_tower.segment.shape_training import choose_postprocess
from napari_tower.stats import compare

RULES = ("first", "middle", "middle_t", "default", "oracle")


def middle_threshold_only(scores: list[tuple[dict, float]]) -> dict:
    """The middle rule for the seed threshold, the first (smallest) tied minimum size: which of the two
    parameters the middle rule's gain comes from."""
    middle = choose_postprocess(scores, ties="middle")
    return choose_postprocess([(p, f1) for p, f1 in scores if p["seed_threshold"] == middle["seed_threshold"]
                               and p.get("nms_threshold") == middle.get("nms_threshold")], ties="first")


def rule_scores(grid: list[dict]) -> dict[str, tuple[dict, list[float]]]:
    """(chosen parameters, per-test-image F1) of each rule on one run's grid record."""
    scores = [(g["params"], g["train_f1"]) for g in grid]
    by_params = {json.dumps(g["params"], sort_keys=True): g["test_f1"] for g in grid}

    def test_of(params: dict) -> list[float]:
        return by_params[json.dumps({k: params[k] for k in grid[0]["params"]}, sort_keys=True)]

    out = {}
    for ties in ("first", "middle"):
        chosen = choose_postprocess(scores, ties=ties)
        out[ties] = (chosen, test_of(chosen))
    chosen = middle_threshold_only(scores)
    out["middle_t"] = (chosen, test_of(chosen))
    default = next((g for g in grid if all(g["params"].get(k) == v for k, v in DEFAULT_POSTPROCESS.items()
                                           if k in g["params"])), None)
    if default is not None:
        out["default"] = (default["params"], default["test_f1"])
    best = max(grid, key=lambda g: float(np.mean(g["test_f1"])))
    out["oracle"] = (best["params"], best["test_f1"])
    return out


def _runs(paths: list[Path]) -> list[dict]:
    return [r for p in paths for r in json.loads(p.read_text())["runs"]]


def _fmt(c) -> str:  # noqa: ANN001
    return f"{c.mean_diff * 100:+.1f} [{c.ci_low * 100:+.1f}, {c.ci_high * 100:+.1f}], p {c.paired_t_p:.2g}"


def analyse(runs: list[dict], boundary: list[dict], reference: list[dict]) -> tuple[list[str], dict]:
    """Markdown lines and a JSON record of every rule, per (data set, budget) and over all cells."""
    refs = {(r["dataset"], r["budget"], r["seed"], r["arm"]): r["f1"] for r in reference}
    # Runs without a grid record (bench_instances.py without --grid) ran the middle rule; their reference run
    # (same training, the first rule) stands for "first", and the other rules are not known.
    shaped = [r for r in runs if r["arm"] != "boundary"
              and (r.get("grid") or (r["dataset"], r["budget"], r["seed"], r["arm"]) in refs)]
    cells = sorted({(r["dataset"], r["budget"]) for r in shaped})
    base = {(r["dataset"], r["budget"], r["seed"]): r["f1"] for r in boundary if r["arm"] == "boundary"}
    lines = ["| data set | labelled | boundary | " + " | ".join(RULES) + " | middle - first | "
             "middle - boundary | tied seed thresholds (per seed) |",
             "|---|---|---|" + "---|" * len(RULES) + "---|---|---|"]
    record: dict = {"cells": [], "reproduced": []}
    diffs: dict[str, list[float]] = {"middle-first": [], "middle-boundary": [], "first-boundary": []}
    for dataset, budget in cells:
        group = {r["seed"]: r for r in shaped if r["dataset"] == dataset and r["budget"] == budget}
        per_rule = {rule: {} for rule in RULES}
        tied = []
        for seed, r in sorted(group.items()):
            if not r.get("grid"):
                per_rule["middle"][seed] = r["f1"]
                per_rule["first"][seed] = refs[(dataset, budget, seed, r["arm"])]
                tied.append([])
                continue
            for rule, (_, f1) in rule_scores(r["grid"]).items():
                per_rule[rule][seed] = f1
            best = max(g["train_f1"] for g in r["grid"])
            tied.append(sorted({g["params"]["seed_threshold"] for g in r["grid"] if g["train_f1"] >= best - 1e-9}))
            ref = refs.get((dataset, budget, seed, r["arm"]))
            if ref is not None:
                record["reproduced"].append(len(ref) == len(per_rule["first"][seed])
                                            and bool(np.allclose(ref, per_rule["first"][seed])))
        means = {rule: float(np.mean([np.mean(v) for v in per_rule[rule].values()])) if per_rule[rule] else None
                 for rule in RULES}
        mf = compare(per_rule["middle"], per_rule["first"], names=("middle", "first"))
        bseeds = {s: base[(dataset, budget, s)] for s in group if (dataset, budget, s) in base}
        mb = compare(per_rule["middle"], bseeds, names=("middle", "boundary")) if len(bseeds) > 1 else None
        fb = compare(per_rule["first"], bseeds, names=("first", "boundary")) if len(bseeds) > 1 else None
        diffs["middle-first"].append(mf.mean_diff)
        if mb is not None:
            diffs["middle-boundary"].append(mb.mean_diff)
            diffs["first-boundary"].append(fb.mean_diff)
        bmean = float(np.mean([np.mean(v) for v in bseeds.values()])) if bseeds else float("nan")
        lines.append(f"| {dataset} | {budget} | {bmean:.3f} | " + " | ".join(
            f"{means[rule]:.3f}" if means[rule] is not None else "" for rule in RULES)
            + f" | {_fmt(mf)} | {_fmt(mb) if mb else ''} | "
            + "; ".join("-".join(f"{t:g}" for t in (ts[0], ts[-1])) if len(ts) > 1 else
                        f"{ts[0]:g}" if ts else "not recorded" for ts in tied)
            + " |")
        record["cells"].append({"dataset": dataset, "budget": budget, "boundary": bmean, **means,
                                "middle_vs_first": mf.as_dict(),
                                "middle_vs_boundary": mb.as_dict() if mb else None,
                                "first_vs_boundary": fb.as_dict() if fb else None, "tied": tied})
    record["mean_diff_points"] = {k: float(np.mean(v) * 100) if v else None for k, v in diffs.items()}
    lines.append("")
    lines.append(f"Over {len(cells)} cells (points): " + ", ".join(
        f"{k} {v:+.2f}" for k, v in record["mean_diff_points"].items() if v is not None)
        + (f"; reference runs reproduced by the first rule: {sum(record['reproduced'])} of "
           f"{len(record['reproduced'])}" if record["reproduced"] else ""))
    return lines, record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="bench_instances results.json with grid records")
    parser.add_argument("--boundary", nargs="*", type=Path, default=[], help="results holding boundary runs")
    parser.add_argument("--reference", nargs="*", type=Path, default=[],
                        help="earlier results of the same arm (trained by the first rule) to check reproduction")
    parser.add_argument("--out", type=Path, help="write the table here (and a .json beside it)")
    args = parser.parse_args(argv)
    lines, record = analyse(_runs(args.results), _runs(args.boundary), _runs(args.reference))
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
