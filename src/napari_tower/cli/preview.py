"""`napari-tower preview`: write each proxy task's corruption of an image."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import PreviewConfig
from ..errors import TowerError
from .options import add_config_options, config_from_args

NAME = "preview"
HELP = "write each proxy task's corruption of an image"
BUILDS = (PreviewConfig,)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    p.add_argument("image", help="the image (its normalisation is computed as for training)")
    p.add_argument("--out", required=True, help="folder for the TIFFs")
    add_config_options(p, PreviewConfig)


def run(args: argparse.Namespace) -> int:
    """Write <corruption>.tif for every proxy task, and print their names as JSON."""
    import numpy as np

    from ..data import compute_normalisation, read_image, write_tiff
    from ..proxy import preview

    cfg = config_from_args(PreviewConfig, args)
    image = read_image(args.image)
    if not cfg.plane < image.shape[0]:
        raise TowerError(f"--plane {cfg.plane} is out of range: {args.image} has {image.shape[0]} plane(s)")
    norm = compute_normalisation(image.data, image.source)
    plane = norm.apply(np.asarray(image.data[cfg.plane]))
    out = Path(args.out)
    for name, view in preview(plane, seed=cfg.seed).items():
        write_tiff(out / f"{name}.tif", view)
    print(json.dumps(sorted(p.name for p in out.glob("*.tif"))))
    return 0
