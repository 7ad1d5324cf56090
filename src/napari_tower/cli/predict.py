"""`napari-tower predict`: segment images with a fine-tuned model (in memory, or block-wise into zarr)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import PredictConfig
from ..errors import TowerError
from .console import StopOnSignal
from .options import add_config_options, config_from_args
from .training import add_level_option
from .volumes import add_volume_options, check_model_fits, say

NAME = "predict"
HELP = "segment images with a fine-tuned model"
BUILDS = (PredictConfig,)

# Above this many pixels an in-memory prediction (float32 probabilities) would need several GB: write zarr instead.
ZARR_OUTPUT_PIXELS = 2**27


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    p.add_argument("model", help="segmenter checkpoint")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--out", required=True, help="output folder (one labels TIFF per input, same name)")
    add_config_options(p, PredictConfig, notes={"probabilities": "<name>_prob.tif"})
    p.add_argument("--zarr", action="store_true",
                   help="write <name>.zarr block by block in bounded memory (automatic for zarr and very large inputs)")
    p.add_argument("--workers", type=int, default=1, help="blocks predicted at once in local threads (zarr output)")
    p.add_argument("--scheduler", help="dask.distributed scheduler address (e.g. tcp://host:8786): predict the blocks "
                   "on that cluster (inputs and --out on storage the workers share)")
    add_volume_options(p, predict=True)
    add_level_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def run(args: argparse.Namespace) -> int:
    """Predict every image; labels (and probabilities) as TIFF, or as zarr for large or zarr inputs."""
    import numpy as np

    from ..data import expand_inputs, read_image, write_tiff
    from ..model_bundle import ModelBundle
    from ..segment.predict import Predictor

    cfg = config_from_args(PredictConfig, args)
    ckpt = ModelBundle.load(args.model)
    predictor = Predictor(ckpt, cfg)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TowerError(f"--out {out} is a file: give a folder for the predictions")
    for path in expand_inputs(args.images):
        image = read_image(path, level=args.level)
        say(check_model_fits(ckpt.config, image, args), args.quiet)
        if args.zarr or args.scheduler or path.suffix.lower() == ".zarr" or _pixels(image) > ZARR_OUTPUT_PIXELS:
            unfamiliar = predictor.unfamiliar(image, predictor.normalisation_for(image))  # predict() checks the rest
            say(f"warning: {unfamiliar}" if unfamiliar else "", args.quiet)
            _predict_zarr(predictor, image, out / (path.stem + ".zarr"), cfg, args)
            continue
        result = predictor.predict(image)
        for warning in result.warnings:
            say(f"warning: {warning}", args.quiet)
        labels = result.labels[0] if image.shape[0] == 1 else result.labels
        target = out / (path.stem + ".tif")
        write_tiff(target, labels.astype(np.uint16 if labels.max() < 65536 else np.uint32))
        if cfg.probabilities:
            probs = result.probabilities[0] if image.shape[0] == 1 else result.probabilities
            write_tiff(out / (path.stem + "_prob.tif"), probs.astype(np.float32))
        if not args.quiet:
            print(f"wrote {target}", file=sys.stderr)
    return 0


def _pixels(image: Any) -> int:
    p, _, h, w = image.shape
    return p * h * w


def _predict_zarr(predictor: Any, image: Any, target: Path, cfg: PredictConfig, args: argparse.Namespace) -> None:
    """Block-wise prediction into a chunked zarr group (labels, and probabilities with --probabilities)."""
    from ..segment.blockwise import predict_blockwise

    def progress(done: int, total: int) -> None:
        if not args.quiet:
            sys.stderr.write(f"\rpredict {image.source}: block {done}/{total}" + ("\n" if done == total else ""))
            sys.stderr.flush()

    with StopOnSignal() as should_stop:
        result = predict_blockwise(predictor, image, target, block=cfg.block, halo=cfg.halo, workers=args.workers,
                                   scheduler=args.scheduler, probabilities=cfg.probabilities, progress=progress,
                                   should_stop=should_stop)
    if not args.quiet:
        objects = f", {sum(result.objects)} objects" if result.objects is not None else ""
        resumed = f", {result.resumed} finished by an interrupted earlier run" if result.resumed else ""
        print(f"wrote {target} ({result.blocks} blocks{resumed}{objects}, {result.seconds:.1f} s)", file=sys.stderr)
