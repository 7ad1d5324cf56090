"""`napari-tower demo`: the whole chain on the built-in sample, in napari or headless."""

from __future__ import annotations

import argparse

from ..config import FinetuneConfig, PretrainConfig
from .console import ProgressBar
from .options import add_config_options, config_from_args

NAME = "demo"
HELP = "run the whole chain on the built-in sample (napari, or --headless)"
BUILDS = ()  # builds its configs itself (napari_tower.demo); only the step counts come from the arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    from ..demo import DEMO_STEPS

    p.add_argument("--headless", action="store_true", help="no GUI: pretrain, fine-tune, predict and print metrics")
    # The demo's own step counts: a couple of minutes on a CPU, where the configs' defaults take longer.
    add_config_options(p, PretrainConfig, only=["steps"], defaults={"steps": DEMO_STEPS},
                       notes={"steps": "of pretraining"})
    add_config_options(p, FinetuneConfig, only=["steps"], defaults={"steps": DEMO_STEPS},
                       flags={"steps": "--finetune-steps"}, notes={"steps": "of fine-tuning"})
    p.add_argument("--out", help="folder for the models (default: a temporary folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Open napari with the sample, or (--headless) train, predict and print the metrics."""
    from ..demo import run_gui, run_headless

    pre = config_from_args(PretrainConfig, args)
    fine = config_from_args(FinetuneConfig, args)
    if not args.headless:
        return run_gui()
    run_headless(pre.steps, fine.steps, args.out, args.quiet, progress=ProgressBar(args.quiet))
    return 0
