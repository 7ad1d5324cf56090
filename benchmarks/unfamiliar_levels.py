"""Which held-out images prediction flags as unlike the labelled ones (`Predictor.unfamiliar`), per shared set.

No training: for each set, labelled draw (bench_instances' splits and draws) and seed, the labelled images'
median levels as fine-tuning stores them (each under its own percentiles) and each test image's level under the
scaling prediction gives it (`stored_or_own`). An image is flagged when its level lies over `UNFAMILIAR_GAP`
outside the labelled range. Each flagged image is listed with whether its objects are darker than its
background (bright-field-like), to tell a true alarm from a false one.

    NAPARI_TOWER_SHARED=/work/shared python benchmarks/unfamiliar_levels.py --out levels.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_instances import DATASETS, labelled_subset, load_split


def main(argv: list[str] | None = None) -> int:
    from napari_tower.data import compute_normalisation, median_level, stored_or_own
    from napari_tower.segment.predict import UNFAMILIAR_GAP, level_gap
    from napari_tower.train.pretrain import model_normalisation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--labelled", nargs="+", default=["1", "5"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    def as_image(im: np.ndarray) -> np.ndarray:
        return im[None, None]  # (P, C, Y, X)

    rows = []
    for name in args.datasets:
        train, test = load_split(name, 10**6)
        dark = [bool(np.median(im[lab > 0]) < np.median(im[lab == 0])) for im, lab in test]
        for budget in args.labelled:
            for seed in range(args.seeds):
                chosen = labelled_subset(len(train), budget, seed)
                norms = [compute_normalisation(as_image(train[i][0]), "train") for i in chosen]
                stored = model_normalisation(norms)
                levels = [median_level(as_image(train[i][0]), n) for i, n in zip(chosen, norms)]
                low, high = min(levels), max(levels)
                test_levels = [median_level(as_image(im), stored_or_own(stored, compute_normalisation(as_image(im),
                                                                                                        "test")))
                               for im, _ in test]
                gaps = [level_gap(v, low, high) for v in test_levels]
                flagged = [k for k, g in enumerate(gaps) if g > UNFAMILIAR_GAP]
                row = {"dataset": name, "labelled": budget, "seed": seed, "train_levels": [round(v, 3) for v in levels],
                       "tests": len(test), "dark_object_tests": int(sum(dark)), "flagged": flagged,
                       "flagged_dark": int(sum(dark[k] for k in flagged)),
                       "largest_unflagged_gap": round(max([g for k, g in enumerate(gaps) if k not in flagged],
                                                          default=0.0), 3),
                       "smallest_flagged_gap": round(min([gaps[k] for k in flagged], default=float("nan")), 3)}
                rows.append(row)
                print(f"{name} {budget} seed {seed}: labelled {low:.2f}-{high:.2f}; {len(flagged)} of {len(test)} "
                      f"flagged ({row['flagged_dark']} with dark objects; {sum(dark)} such in the set); "
                      f"largest unflagged gap {row['largest_unflagged_gap']:.2f}, smallest flagged "
                      f"{row['smallest_flagged_gap']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"gap": UNFAMILIAR_GAP, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
