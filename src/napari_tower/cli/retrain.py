"""`napari-tower retrain`: one round of the correct-and-retrain loop from files, as the widget's Retrain does it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import RetrainConfig
from .console import EXIT_INTERRUPTED, ProgressBar, StopOnSignal
from .options import add_config_options, config_from_args

NAME = "retrain"
HELP = "retrain a segmenter on corrected labels (the widget's Retrain from corrections)"
BUILDS = (RetrainConfig,)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    p.add_argument("model", help="segmenter checkpoint that made the prediction")
    p.add_argument("image", help="the image the prediction was made for")
    p.add_argument("--labels", required=True, help="the corrected labels (the prediction after your edits)")
    p.add_argument("--previous", required=True, help="the prediction as it was before your edits")
    p.add_argument("--out", required=True, help="the retrained segmenter to write")
    p.add_argument("--prediction", help="also write the new prediction of the corrected planes (TIFF)")
    p.add_argument("--planes", help="planes to learn from, comma-separated (default: those with a prediction or "
                   "a correction)")
    p.add_argument("--axes", help="the image's axes when the guess is wrong, e.g. ZYX for a stack of 3 planes "
                   "(default: guessed; 3 or 4 leading planes read as channels)")
    p.add_argument("--train-images", nargs="+", default=[], metavar="IMAGE",
                   help="the images the model was fine-tuned on: windows of them and their --train-labels are "
                   "replayed beside the corrections (see --replay), so the retrain keeps what they taught")
    p.add_argument("--train-labels", nargs="+", default=[], metavar="LABELS",
                   help="the labels the model was fine-tuned on, one per --train-images file")
    add_config_options(p, RetrainConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Retrain and write the new model (and prediction); a stop keeps nothing half-written."""
    from ..data import read_image, read_labels, write_tiff
    from ..errors import TowerError
    from ..model_bundle import check_writable
    from ..segment.retrain import retrain

    cfg = config_from_args(RetrainConfig, args)
    check_writable(args.out)
    try:
        planes = [int(p) for p in args.planes.split(",")] if args.planes else None
    except ValueError:
        raise TowerError(f"--planes {args.planes!r} is not a comma-separated list of plane numbers, e.g. 0,2") from None
    if len(args.train_images) != len(args.train_labels):
        raise TowerError(f"got {len(args.train_images)} --train-images and {len(args.train_labels)} --train-labels: "
                         "give one labels file per training image")
    image = read_image(args.image, axes=args.axes)
    previous, corrected = read_labels(args.previous), read_labels(args.labels)
    replay = [(read_image(i), read_labels(lab)) for i, lab in zip(args.train_images, args.train_labels)]
    with StopOnSignal() as should_stop:
        result = retrain(args.model, image, previous, corrected, cfg, planes, ProgressBar(args.quiet), should_stop,
                         replay=replay)
    if result.stopped:
        print("interrupted: nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    result.model.save(args.out)
    if args.prediction:
        write_tiff(Path(args.prediction), result.labels(previous))
    if not args.quiet:
        print(f"wrote {args.out}: retrained on plane(s) {result.planes}, {result.edited} corrected pixel(s) "
              f"weighted x{cfg.edit_weight:g}", file=sys.stderr)
    return 0
