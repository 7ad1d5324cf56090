"""`napari-tower export MODEL --bioimageio OUT.zip`: a fine-tuned model as a bioimage.io model package."""

from __future__ import annotations

import argparse
import sys

NAME = "export"
HELP = "write a fine-tuned model as a bioimage.io model package"
BUILDS = ()  # BioimageioExportConfig declares no param() metadata: its options are written out here


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    from ..bioimageio.exporter import NORMALISE_MODES, WEIGHT_FORMATS, BioimageioExportConfig

    p.add_argument("model", help="segmenter checkpoint (napari-tower finetune --out)")
    p.add_argument("--bioimageio", required=True, metavar="OUT.zip", help="the package (zip) to write")
    p.add_argument("--name", default=BioimageioExportConfig.name, help="the model's name on bioimage.io")
    p.add_argument("--description", default="", help="one sentence: what it segments, in which images")
    p.add_argument("--author", action="append", default=[], help="an author's name (repeat for several)")
    p.add_argument("--license", default=BioimageioExportConfig.license, help="SPDX license id (default CC-BY-4.0)")
    p.add_argument("--test-image", help="image whose first plane (a centred crop of at most 256 px) becomes the "
                                        "test input (default: the built-in synthetic nuclei)")
    p.add_argument("--weights", default=",".join(WEIGHT_FORMATS),
                   help=f"comma-separated weight formats from {','.join(WEIGHT_FORMATS)} (default both)")
    p.add_argument("--normalise", choices=NORMALISE_MODES, default=BioimageioExportConfig.normalise,
                   help="preprocessing: per-image percentiles or the model's stored ones (as napari-tower predict)")
    p.add_argument("--no-check", action="store_true", help="skip bioimage.io's own test of the written package")


def run(args: argparse.Namespace) -> int:
    """Write the package, then (unless --no-check) run bioimage.io's own test on it."""
    from ..bioimageio.exporter import BioimageioExportConfig, check_bioimageio_package, export_bioimageio
    from ..data import read_image

    cfg = BioimageioExportConfig(
        name=args.name, description=args.description, authors=tuple(args.author), license=args.license,
        weight_formats=tuple(w.strip() for w in args.weights.split(",") if w.strip()), normalise=args.normalise)
    cfg.validate()
    test_image = read_image(args.test_image) if args.test_image else None
    out = export_bioimageio(args.model, args.bioimageio, cfg, test_image)
    if args.no_check:
        print(f"wrote {out}", file=sys.stderr)
        return 0
    report = check_bioimageio_package(out)
    if not report.passed:
        print(f"error: wrote {out}, but it failed bioimage.io's test: " + "; ".join(report.errors[:3])
              + " (please report this)", file=sys.stderr)
        return 1
    print(f"wrote {out}: bioimage.io's test passed ({', '.join(cfg.weight_formats)} reproduce the test output)",
          file=sys.stderr)
    if not cfg.authors:
        print("note: no --author given; bioimage.io asks for the authors' names before a model is uploaded",
              file=sys.stderr)
    return 0
