"""Recompute the verdicts of earlier `napari-tower bench` runs at the seed level.

Reads each results.json, replaces its pooled (seed x image) paired tests with seed-level ones
(`napari_tower.stats.compare`: paired over seed means, hierarchical bootstrap interval) and rewrites
results.json and results.md beside it. Usage: python benchmarks/restat.py docs/benchmarks/isbi-quick ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_tower.bench import Cell, write_report


def restat(folder: Path) -> list[dict]:
    data = json.loads((folder / "results.json").read_text())
    cells = [Cell(**c) for c in data["cells"]]
    old = data.get("paired_tests", [])
    meta = dict(data["meta"])
    if old and "n_pairs" in old[0]:  # keep what was published before, for the record
        meta.setdefault("pooled_tests_superseded", old)
    write_report(cells, folder, meta)
    return json.loads((folder / "results.json").read_text())["paired_tests"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    for folder in parser.parse_args().folders:
        print(f"## {folder}")
        for t in restat(folder):
            low, high = t["ci95_points"]
            print(f"{t['fraction']:g} {t['baseline']:<19} {t['dice_diff_points']:+.2f} [{low:+.2f}, {high:+.2f}] "
                  f"seeds {t['n_seeds']} t p {t['paired_t_p']:.3g}  {t['verdict']}")


if __name__ == "__main__":
    main()
