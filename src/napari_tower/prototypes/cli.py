"""`napari-tower prototypes CKPT IMAGE... --k K --out DIR [--assign "1=bg,2=fg"]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..atomic import atomic_write, atomic_write_bytes
from ..config import PrototypeConfig, to_dict
from ..errors import TowerError

GALLERY_EXAMPLES = 6


def add_prototypes_command(sub: Any) -> None:
    p = sub.add_parser(
        "prototypes", help="cluster pixels into prototypes (map + gallery); with --assign, write pseudo-labels",
        description="Find K prototypes in the pixel embeddings of a pretrained model and write one prototype map "
                    "per image, gallery.png and prototypes.npz. Look at the gallery, then run again with --assign "
                    "(and --prototypes DIR/prototypes.npz to reuse the same prototypes) to write sparse "
                    "pseudo-labels that `napari-tower finetune --target sparse` reads.")
    p.add_argument("checkpoint", help="pretraining checkpoint (napari-tower pretrain)")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--k", type=int, default=PrototypeConfig.k, help=f"number of prototypes (default {PrototypeConfig.k})")
    p.add_argument("--assign", help='prototype names, e.g. "1=bg,2=fg,3=fg" (bg = 1, fg = 2, none, or a class '
                                    "number 2..); writes <image>_pseudo.tif")
    p.add_argument("--ignore", type=float, default=PrototypeConfig.ignore,
                   help="share of each class's least certain pixels left unannotated (default 0.2)")
    p.add_argument("--prototypes", help="reuse prototypes.npz from an earlier run instead of clustering again")
    p.add_argument("--levels", help="encoder levels to describe pixels with (default 0,1,2,3: the finest four)")
    p.add_argument("--intensity-weight", type=float, default=PrototypeConfig.intensity_weight,
                   help=f"weight of the normalised intensity in a pixel's description (default {PrototypeConfig.intensity_weight})")
    p.add_argument("--samples", type=int, default=PrototypeConfig.samples, help="pixels drawn to fit the prototypes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--quiet", action="store_true")


def _levels(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise TowerError(f"--levels {text} is invalid: give encoder levels as numbers, e.g. 0,1,2") from None


def write_gallery(path: Path, crops: list, shares: Sequence[float]) -> None:
    """gallery.png: one labelled row per prototype (matplotlib), or the plain mosaic without it; written atomically."""
    from .gallery import gallery_mosaic, prototype_colours, tinted

    colours = prototype_colours(len(crops))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import imageio.v3 as iio

        atomic_write_bytes(path, iio.imwrite("<bytes>", gallery_mosaic(crops, colours), extension=".png"), "gallery")
        return
    cols = max(1, max(len(row) for row in crops))
    fig, axes = plt.subplots(len(crops), cols, figsize=(1.3 * cols + 1.2, 1.3 * len(crops)), squeeze=False, dpi=100)
    for r, row in enumerate(crops):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(tinted(row[c], colours[r]), interpolation="nearest")
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(f"{r + 1}\n{shares[r] * 100:.0f}%", rotation=0, ha="right", va="center",
                              color=colours[r] * 0.8, fontsize=11, fontweight="bold")
    fig.suptitle("prototypes (id, share of pixels); tinted: pixels of that prototype", fontsize=9)
    fig.tight_layout()
    try:
        with atomic_write(path, "gallery") as fh:
            fig.savefig(fh, format="png")
    finally:
        plt.close(fig)


def cmd_prototypes(args: argparse.Namespace) -> int:
    from ..data import expand_inputs, read_image, write_tiff
    from ..model_bundle import ModelBundle
    from . import Prototypes, find_prototypes, gallery_crops, most_typical_image, parse_mapping, pseudo_labels
    from ..cli import ProgressBar

    cfg = PrototypeConfig(k=args.k, seed=args.seed, device=args.device, levels=_levels(args.levels),
                          intensity_weight=args.intensity_weight, samples=args.samples, ignore=args.ignore)
    cfg.validate()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TowerError(f"--out {out} is a file: give a folder for the prototype maps")
    ckpt = ModelBundle.load(args.checkpoint)
    reuse = Prototypes.load(args.prototypes) if args.prototypes else None
    k = reuse.k if reuse is not None else cfg.k
    mapping = parse_mapping(args.assign, k) if args.assign else None
    paths = expand_inputs(args.images)
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})[0]
        raise TowerError(f"two images are named '{twice}': outputs are named after images, so rename one")
    images = [read_image(p) for p in paths]
    result = find_prototypes(images, ckpt, cfg, ProgressBar(args.quiet), prototypes=reuse)
    protos = result.prototypes
    written: dict[str, Any] = {"k": protos.k, "shares": [round(float(s), 4) for s in protos.shares],
                               "config": to_dict(protos.config), "levels": list(protos.levels),
                               # the image whose prototype mix is the most usual: the best one to name prototypes on
                               "most_typical_image": str(paths[most_typical_image(result.assignments)]), "images": []}
    protos.save(out / "prototypes.npz")
    for path, image, a in zip(paths, images, result.assignments):
        squeeze: Callable[[np.ndarray], np.ndarray] = (lambda x: x[0]) if image.shape[0] == 1 else (lambda x: x)
        entry = {"image": str(path), "prototypes": str(out / f"{path.stem}_prototypes.tif")}
        write_tiff(entry["prototypes"], squeeze(a.prototype_map()))
        if mapping is not None:
            entry["pseudo_labels"] = str(out / f"{path.stem}_pseudo.tif")
            write_tiff(entry["pseudo_labels"], squeeze(pseudo_labels(a, mapping, cfg.ignore)))
        written["images"].append(entry)
    write_gallery(out / "gallery.png", gallery_crops(images, result.assignments, GALLERY_EXAMPLES, seed=cfg.seed),
                  protos.shares)
    if mapping is not None:
        written["assign"] = {str(p): c for p, c in sorted(mapping.items())}
        written["ignore"] = cfg.ignore
    atomic_write_bytes(out / "prototypes.json", json.dumps(written, indent=2).encode(), "prototypes summary")
    if not args.quiet:
        print(f"wrote {len(images)} prototype map(s), gallery.png and prototypes.npz to {out}", file=sys.stderr)
        if mapping is None:
            print(f"next: look at {out / 'gallery.png'}, then name prototypes: napari-tower prototypes "
                  f"{args.checkpoint} IMAGES --out {out} --prototypes {out / 'prototypes.npz'} --assign \"1=bg,2=fg\"",
                  file=sys.stderr)
        else:
            print(f"next: napari-tower finetune IMAGES --labels {out}/*_pseudo.tif --target sparse "
                  f"--init {args.checkpoint} --out model.pt", file=sys.stderr)
    return 0


PROTOTYPE_COMMANDS = {"prototypes": cmd_prototypes}

__all__ = ["PROTOTYPE_COMMANDS", "add_prototypes_command", "cmd_prototypes", "write_gallery"]
