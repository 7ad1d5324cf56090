"""Options shared by the training commands (pretrain, finetune) that are not config fields."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..config import AcceleratorConfig
from ..params import default_of
from .options import field_param

# --precision is one option for two fields: mixed_precision (off for float32) and accel.amp_dtype.
PRECISION_CHOICES = (*(field_param(AcceleratorConfig, "amp_dtype").choices or ()), "float32")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """--precision, --level and --quiet."""
    parser.add_argument("--precision", default=default_of(AcceleratorConfig, "amp_dtype"), choices=PRECISION_CHOICES,
                        help="mixed precision on CUDA (float16 adds loss scaling; float32: off); "
                        "a CPU follows --cpu-bf16")
    add_level_option(parser, "of OME-Zarr or pyramidal TIFF images")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_level_option(parser: argparse.ArgumentParser, of: str = "of an OME-Zarr or pyramidal TIFF") -> None:
    """--level: which resolution of a pyramid to read."""
    parser.add_argument("--level", type=int, default=0, help=f"resolution level {of} (0 = full)")


def training_precision(args: argparse.Namespace) -> dict[str, Any]:
    """PretrainConfig/FinetuneConfig keyword arguments for --precision and --compile."""
    mixed = args.precision != "float32"
    return {"mixed_precision": mixed,
            "accel": AcceleratorConfig(
                amp_dtype=args.precision if mixed else default_of(AcceleratorConfig, "amp_dtype"),
                compile=args.compile)}


def read_images(items: Sequence[str], level: int = 0) -> list[Any]:
    """Read every image the arguments name (files, folders, globs) at pyramid `level`."""
    from ..data import expand_inputs, read_image

    return [read_image(p, level=level) for p in expand_inputs(items)]
