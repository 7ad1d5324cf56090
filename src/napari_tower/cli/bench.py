"""`napari-tower bench`: TOWER against its baselines (the grid and the report live in napari_tower.bench)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from ..config import FinetuneConfig, PretrainConfig
from .options import add_config_options

NAME = "bench"
HELP = "benchmark TOWER against its baselines"
BUILDS = ()  # builds its configs from a preset (napari_tower.bench.resolve_preset), not from the arguments

PRESET_NOTE = "default: the preset's"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    from ..bench import BENCH_METHODS

    p.add_argument("--data", nargs="+", required=True, help="images (files, folders or globs)")
    p.add_argument("--labels", nargs="+", required=True, help="labels, one per image, same order")
    p.add_argument("--out", required=True, help="folder for results.json, results.md and the plot")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="about 15 minutes on a 2-core CPU")
    group.add_argument("--full", action="store_true", help="the whole grid, meant for a GPU")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(BENCH_METHODS)}")
    p.add_argument("--fractions", help="comma-separated label fractions, e.g. 0.01,0.1,1")
    p.add_argument("--seeds", type=int, help=f"how many seeds ({PRESET_NOTE})")
    # None: the preset's value (--quick or --full), so these options have no default of their own.
    add_config_options(p, PretrainConfig, only=["steps"], flags={"steps": "--pretrain-steps"},
                       defaults={"steps": None}, notes={"steps": f"of pretraining, {PRESET_NOTE}"})
    shared = ["steps", "batch", "data.patch", "model.base", "model.depth"]
    add_config_options(p, FinetuneConfig, only=[*shared, "device"], flags={"steps": "--finetune-steps"},
                       defaults=dict.fromkeys(shared),
                       notes={**{path: PRESET_NOTE for path in shared}, "steps": f"of fine-tuning, {PRESET_NOTE}"})
    p.add_argument("--test-planes", help="planes held out for testing, e.g. 20:30 (ISBI); default a seeded 20%% split")
    p.add_argument("--grayscale-only", action="store_true", help="skip colour images (DSB2018 fluorescence subset)")
    p.add_argument("--quiet", action="store_true", help="no per-cell lines")


def run(args: argparse.Namespace) -> int:
    """Run the grid and write results.json, results.md and dice_vs_fraction.png."""
    from ..bench import load_dataset, resolve_preset, run_grid, write_report

    preset = resolve_preset(
        "full" if args.full else "quick",
        methods=tuple(args.methods.split(",")) if args.methods else None,
        fractions=tuple(float(f) for f in args.fractions.split(",")) if args.fractions else None,
        seeds=args.seeds, pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps,
        base=args.base, depth=args.depth, patch=args.patch, batch=args.batch)
    t0 = time.perf_counter()
    ds = load_dataset(args.data, args.labels, args.test_planes, grayscale_only=args.grayscale_only)
    out = Path(args.out)
    cells = run_grid(ds, preset, out, args.device, args.quiet)
    import platform

    import torch

    meta = {"preset": asdict(preset), "data": args.data, "labels": args.labels, "test_planes": args.test_planes,
            "description": ds.description, "wall_s": time.perf_counter() - t0, "torch": torch.__version__,
            "device": args.device, "machine": platform.platform(), "threads": torch.get_num_threads()}
    write_report(cells, out, meta)
    if not args.quiet:
        print(f"bench: wrote {out / 'results.md'} in {meta['wall_s'] / 60:.1f} min")
    return 0
