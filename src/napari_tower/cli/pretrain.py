"""`napari-tower pretrain`: self-supervised pretraining on unlabelled images."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..config import PretrainConfig
from ..generalist import resolve_init
from ..params import default_of
from .console import EXIT_INTERRUPTED, ProgressBar, StopOnSignal
from .options import add_config_options, config_from_args
from .training import add_training_options, read_images, training_precision
from .volumes import (
    add_volume_options,
    given_voxel_size,
    resolve_volumes,
    say,
    take_volume_defaults,
    volume_default_options,
)

NAME = "pretrain"
HELP = "self-supervised pretraining on unlabelled images"
BUILDS = (PretrainConfig,)  # the configs run() builds from the arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    p.add_argument("images", nargs="+", help="image files, folders or globs (TIFF, PNG, NPY, zarr)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--resume", help="continue this checkpoint's run")
    p.add_argument("--init", help="warm-start the network from this checkpoint, or 'generalist' for the built-in one "
                   "(adapts it to your images)")
    # --steps None: the field's default, or with --resume the interrupted run's own step count. --patch,
    # --patch-z, --batch: None (not given) until the mode is known; 3D takes its own defaults.
    defaults, notes = volume_default_options(PretrainConfig)
    add_config_options(p, PretrainConfig, defaults={**defaults, "steps": None},
                       notes={**notes, "steps": f"default {default_of(PretrainConfig, 'steps')}, with --resume the "
                                                "interrupted run's total"})
    add_volume_options(p)
    add_training_options(p)


def _steps(args: argparse.Namespace) -> int:
    """--steps, else the default; when resuming, 0 keeps the interrupted run's total (and so its schedule)."""
    if args.steps is not None:
        return args.steps
    return 0 if args.resume else default_of(PretrainConfig, "steps")


def run(args: argparse.Namespace) -> int:
    """Pretrain; on SIGINT/SIGTERM keep a resumable checkpoint and say how to continue."""
    from ..model_bundle import check_writable
    from ..train import pretrain

    cfg = config_from_args(PretrainConfig, args, steps=_steps(args), **training_precision(args))
    given_voxel_size(args)  # a bad --voxel-size is an error before anything is read
    out = Path(args.out)
    check_writable(out)
    images = read_images(args.images, args.level)
    init = resolve_init(args.init)
    volumes = resolve_volumes(args, images, args.resume or init)
    volumes.apply(cfg)
    say(volumes.note, args.quiet)
    if not args.resume:  # a resumed run continues with its checkpoint's own settings
        say(take_volume_defaults(cfg, args), args.quiet)
    with StopOnSignal() as should_stop:
        result = pretrain(images, cfg, out, ProgressBar(args.quiet), should_stop, args.resume, init)
    if result.world_size > 1:  # under torchrun: one line per rank, so a rank that did not train shows
        losses = " ".join(f"{k}={v:.4f}" for k, v in result.last.losses.items())
        print(f"rank {result.rank}/{result.world_size}: {result.last.step} steps, {losses}", file=sys.stderr)
        if result.rank != 0:
            return EXIT_INTERRUPTED if result.last.stopped else 0
    if result.last.stopped:
        again = " ".join(shlex.quote(str(a)) for a in [*args.images, "--out", out, "--resume", out])
        print(f"interrupted at step {result.last.step}; checkpoint kept in {out}; "
              f"continue with: napari-tower pretrain {again}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0
