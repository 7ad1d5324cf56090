"""`napari-tower finetune`: train a segmenter from labels."""

from __future__ import annotations

import argparse
import sys

from ..config import FinetuneConfig
from ..errors import TowerError
from ..generalist import resolve_init
from .console import EXIT_INTERRUPTED, ProgressBar, StopOnSignal
from .options import add_config_options, config_from_args
from .training import add_training_options, training_precision
from .volumes import (
    add_volume_options,
    given_voxel_size,
    resolve_volumes,
    say,
    take_volume_defaults,
    volume_default_options,
)

NAME = "finetune"
HELP = "train a segmenter from labels"
BUILDS = (FinetuneConfig,)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--labels", nargs="+", required=True, help="label images, one per image, same order")
    p.add_argument("--out", required=True, help="segmenter checkpoint to write")
    p.add_argument("--init", help="pretraining checkpoint, 'generalist' for the built-in one, or a segmenter to "
                   "keep training (default: random initialisation)")
    # --patch, --patch-z, --batch: None (not given) until the mode is known; 3D takes its own defaults.
    defaults, notes = volume_default_options(FinetuneConfig)
    add_config_options(p, FinetuneConfig, defaults=defaults, notes=notes)
    add_volume_options(p)
    add_training_options(p)


def run(args: argparse.Namespace) -> int:
    """Fine-tune; on SIGINT/SIGTERM keep the model so far and say how to continue."""
    from ..data import expand_inputs, read_image, read_labels
    from ..model_bundle import check_writable
    from ..segment.finetune import finetune

    cfg = config_from_args(FinetuneConfig, args, **training_precision(args))
    given_voxel_size(args)  # a bad --voxel-size is an error before anything is read
    check_writable(args.out)
    image_paths, label_paths = expand_inputs(args.images), expand_inputs(args.labels)
    if len(image_paths) != len(label_paths):
        raise TowerError(f"{len(image_paths)} image(s) but {len(label_paths)} label file(s): give one label file "
                         "per image")
    images = [read_image(p, level=args.level) for p in image_paths]
    labels = [read_labels(p) for p in label_paths]
    init = resolve_init(args.init)
    volumes = resolve_volumes(args, images, init)
    volumes.apply(cfg)
    say(volumes.note, args.quiet)
    say(take_volume_defaults(cfg, args), args.quiet)
    with StopOnSignal() as should_stop:
        result = finetune(images, labels, cfg, args.out, init, None, ProgressBar(args.quiet), should_stop)
    if result.last.stopped:
        print(f"interrupted at step {result.last.step}; the model so far is in {args.out} "
              f"(continue training it with --init {args.out})", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.quiet:
        best = f" (best validation Dice {result.best_val_dice:.3f})" if result.best_val_dice is not None else ""
        print(f"wrote {args.out}{best}", file=sys.stderr)
    return 0
