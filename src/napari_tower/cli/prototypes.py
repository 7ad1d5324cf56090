"""`napari-tower prototypes CKPT IMAGE... --k K --out DIR [--assign "1=bg,2=fg"]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
from ..config import PrototypeConfig, to_dict
from ..errors import TowerError
from .console import ProgressBar
from .options import add_config_options, config_from_args

NAME = "prototypes"
HELP = "cluster pixels into prototypes (map + gallery); with --assign, write pseudo-labels"
DESCRIPTION = ("Find K prototypes in the pixel embeddings of a pretrained model and write one prototype map per "
               "image, gallery.png and prototypes.npz. Look at the gallery, then run again with --assign (and "
               "--prototypes DIR/prototypes.npz to reuse the same prototypes) to write sparse pseudo-labels that "
               "`napari-tower finetune --target sparse` reads.")
BUILDS = (PrototypeConfig,)

GALLERY_EXAMPLES = 6  # example crops per prototype in gallery.png


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    p.add_argument("checkpoint", help="pretraining checkpoint (napari-tower pretrain)")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--assign", help='prototype names, e.g. "1=bg,2=fg,3=fg" (bg = 1, fg = 2, none, or a class '
                                    "number 2..); writes <image>_pseudo.tif")
    p.add_argument("--prototypes", help="reuse prototypes.npz from an earlier run instead of clustering again")
    add_config_options(p, PrototypeConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Find (or reuse) the prototypes; write maps, gallery, prototypes.npz/json and, with --assign, pseudo-labels."""
    import numpy as np

    from ..data import expand_inputs, read_image, write_tiff
    from ..model_bundle import ModelBundle
    from ..prototypes import (
        Prototypes,
        find_prototypes,
        gallery_crops,
        most_typical_image,
        parse_mapping,
        pseudo_labels,
        write_gallery,
    )

    cfg = config_from_args(PrototypeConfig, args)
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
