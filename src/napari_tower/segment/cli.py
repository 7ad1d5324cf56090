"""CLI commands for segmentation: finetune, predict, evaluate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig
from ..errors import TowerError


def add_segment_commands(sub: Any, add_common: Callable[[argparse.ArgumentParser, int, int], None]) -> None:
    p = sub.add_parser("finetune", help="train a segmenter from labels")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--labels", nargs="+", required=True, help="label images, one per image, same order")
    p.add_argument("--out", required=True, help="segmenter checkpoint to write")
    p.add_argument("--init", help="pretraining checkpoint (or a segmenter to keep training)")
    p.add_argument("--fraction", type=float, default=1.0, help="share of labelled planes to use (seeded, nested)")
    p.add_argument("--target", default="auto", choices=["auto", "binary", "semantic", "instance", "sparse"],
                   help="how to read the labels; sparse: 0 = unannotated, 1 = background, 2.. = classes")
    p.add_argument("--transfer", choices=["auto", "encoder", "encoder+decoder"], default="auto",
                   help="which pretrained parts initialise the segmenter (auto: what the method transfers)")
    add_common(p, FinetuneConfig.steps, FinetuneConfig.batch)

    p = sub.add_parser("predict", help="segment images with a fine-tuned model")
    p.add_argument("model", help="segmenter checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True, help="output folder (one labels TIFF per input, same name)")
    p.add_argument("--instances", action="store_true", help="instance labels (watershed) instead of classes")
    p.add_argument("--tile", type=int, default=PredictConfig.tile)
    p.add_argument("--overlap", type=int, default=PredictConfig.overlap)
    p.add_argument("--batch", type=int, default=PredictConfig.batch, help="tiles per forward pass")
    p.add_argument("--precision", default=PredictConfig.precision, choices=["auto", "float32", "bfloat16"],
                   help="compute precision (auto: bfloat16 where the device computes it natively)")
    p.add_argument("--min-size", type=int, default=PredictConfig.min_size)
    p.add_argument("--probabilities", action="store_true", help="also write class probabilities (<name>_prob.tif)")
    p.add_argument("--zarr", action="store_true",
                   help="write <name>.zarr block by block in bounded memory (automatic for zarr and very large inputs)")
    p.add_argument("--block", type=int, default=PredictConfig.block, help="block side for zarr output (default 4096)")
    p.add_argument("--halo", type=int, default=PredictConfig.halo,
                   help="context read around each block: at least the largest object's diameter (default 64)")
    p.add_argument("--workers", type=int, default=1, help="blocks predicted at once in local threads (zarr output)")
    p.add_argument("--scheduler", help="dask.distributed scheduler address (e.g. tcp://host:8786): predict the blocks "
                   "on that cluster (inputs and --out on storage the workers share)")
    p.add_argument("--level", type=int, default=0, help="resolution level of an OME-Zarr or pyramidal TIFF (0 = full)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("evaluate", help="compare predicted labels with ground truth")
    p.add_argument("--pred", nargs="+", required=True)
    p.add_argument("--truth", nargs="+", required=True)
    p.add_argument("--json", action="store_true", help="print a JSON object instead of a table")


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..data import expand_inputs, read_image, read_labels
    from .finetune import finetune
    from ..cli import ProgressBar, StopOnSignal, EXIT_INTERRUPTED, training_precision

    cfg = FinetuneConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, device=args.device,
                         fraction=args.fraction, target=args.target,
                         data=DataConfig(patch=args.patch, structure_prior=not args.no_prior),
                         model=ModelConfig(base=args.base, depth=args.depth), **training_precision(args))
    cfg.validate()
    from ..model_bundle import check_writable

    check_writable(args.out)
    image_paths, label_paths = expand_inputs(args.images), expand_inputs(args.labels)
    if len(image_paths) != len(label_paths):
        raise TowerError(f"{len(image_paths)} image(s) but {len(label_paths)} label file(s): give one label file per image")
    images = [read_image(p, level=args.level) for p in image_paths]
    labels = [read_labels(p) for p in label_paths]
    transfer = None if args.transfer == "auto" else tuple(args.transfer.split("+"))
    stopper = StopOnSignal()
    with stopper as should_stop:
        result = finetune(images, labels, cfg, args.out, args.init, None, ProgressBar(args.quiet), should_stop, transfer)
    if result.last.stopped:
        print(f"interrupted at step {result.last.step}; the model so far is in {args.out} "
              f"(continue training it with --init {args.out})", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.quiet:
        best = f" (best validation Dice {result.best_val_dice:.3f})" if result.best_val_dice is not None else ""
        print(f"wrote {args.out}{best}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..data import expand_inputs, read_image, write_tiff
    from ..model_bundle import ModelBundle
    from .predict import Predictor

    ckpt = ModelBundle.load(args.model)
    cfg = PredictConfig(tile=args.tile, overlap=args.overlap, batch=args.batch, device=args.device,
                        instances=args.instances, min_size=args.min_size, precision=args.precision)
    predictor = Predictor(ckpt, cfg)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TowerError(f"--out {out} is a file: give a folder for the predictions")
    for path in expand_inputs(args.images):
        image = read_image(path, level=args.level)
        if args.zarr or args.scheduler or path.suffix.lower() == ".zarr" or _pixels(image) > ZARR_OUTPUT_PIXELS:
            _predict_zarr(predictor, image, out / (path.stem + ".zarr"), args)
            continue
        result = predictor.predict(image)
        labels = result.labels[0] if image.shape[0] == 1 else result.labels
        target = out / (path.stem + ".tif")
        write_tiff(target, labels.astype(np.uint16 if labels.max() < 65536 else np.uint32))
        if args.probabilities:
            probs = result.probabilities[0] if image.shape[0] == 1 else result.probabilities
            write_tiff(out / (path.stem + "_prob.tif"), probs.astype(np.float32))
        if not args.quiet:
            print(f"wrote {target}", file=sys.stderr)
    return 0


# Above this many pixels an in-memory prediction (float32 probabilities) would need several GB: write zarr instead.
ZARR_OUTPUT_PIXELS = 2**27


def _pixels(image: Any) -> int:
    p, _, h, w = image.shape
    return p * h * w


def _predict_zarr(predictor: Any, image: Any, target: Path, args: argparse.Namespace) -> None:
    """Block-wise prediction into a chunked zarr group (labels, and probabilities with --probabilities)."""
    from ..cli import StopOnSignal
    from .blockwise import predict_blockwise

    def progress(done: int, total: int) -> None:
        if not args.quiet:
            sys.stderr.write(f"\rpredict {image.source}: block {done}/{total}" + ("\n" if done == total else ""))
            sys.stderr.flush()

    with StopOnSignal() as should_stop:
        result = predict_blockwise(predictor, image, target, block=args.block, halo=args.halo, workers=args.workers,
                                   scheduler=args.scheduler, probabilities=args.probabilities, progress=progress,
                                   should_stop=should_stop)
    if not args.quiet:
        objects = f", {sum(result.objects)} objects" if result.objects is not None else ""
        print(f"wrote {target} ({result.blocks} blocks{objects}, {result.seconds:.1f} s)", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..data import expand_inputs, read_labels
    from .metrics import evaluate

    preds, truths = expand_inputs(args.pred), expand_inputs(args.truth)
    if len(preds) != len(truths):
        raise TowerError(f"{len(preds)} prediction(s) but {len(truths)} truth file(s): give them in matching pairs")
    pred_planes: list[np.ndarray] = []
    truth_planes: list[np.ndarray] = []
    names: list[str] = []
    for p, t in zip(preds, truths):
        a, b = read_labels(p), read_labels(t)
        if a.shape != b.shape:
            raise TowerError(f"prediction {p} has shape {a.shape} but its truth {t} has shape {b.shape}: give matching files in the same order")
        for k in range(a.shape[0]):
            pred_planes.append(a[k])
            truth_planes.append(b[k])
            names.append(p.name if a.shape[0] == 1 else f"{p.name}[{k}]")
    result = evaluate(pred_planes, truth_planes)
    for row, name in zip(result["images"], names):
        row["name"] = name
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    keys = [k for k in ("dice", "iou", "precision", "recall", "f1", "ap") if k in result["mean"]]
    print("image".ljust(32) + "".join(k.rjust(10) for k in keys))
    for row in result["images"]:
        print(str(row["name"])[:31].ljust(32) + "".join(f"{row[k]:10.4f}" for k in keys))
    print("mean".ljust(32) + "".join(f"{result['mean'][k]:10.4f}" for k in keys))
    print("pooled".ljust(32) + "".join(f"{result['pooled'][k]:10.4f}" if k in result["pooled"] else " " * 10 for k in keys))
    return 0


SEGMENT_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "finetune": cmd_finetune, "predict": cmd_predict, "evaluate": cmd_evaluate,
}
