"""--dims and --voxel-size (issue 17): which of 2D planes or 3D volumes a run trains on, and the voxel size.

`--dims auto` (the default) applies `data.voxels.choose_dims` to the first image, unless the run continues a
checkpoint (--init, --resume), whose own dims win. The voxel size is --voxel-size, else what the first image's
file declares (ImageJ, OME-XML, OME-Zarr), else the checkpoint's, else isotropic. The resolved values go into
the config (`ModelConfig.dims` / `voxel_size`), which the checkpoint saves. `--patch-z` is generated from
`DataConfig.patch_z`. Predict takes no choice: the model decides, and a 3D model refuses an image with no volume.

--patch, --patch-z and --batch default to "not given" (`volume_default_options`): a 2D run then takes the
config's defaults, a 3D run the 3D CPU defaults (`napari_tower.volume_defaults`), and `take_volume_defaults`
says which it took, so the run can be repeated with explicit options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..data.voxels import DIMS_CHOICES, ISOTROPIC, DimsChoice, VoxelSize, dims_of_image, parse_voxel_size
from ..errors import TowerError
from ..params import default_of
from ..volume_defaults import FIELDS, apply_volume_defaults, describe_applied, volume_defaults
from .options import OPTIONS_KEY, field_param, given_paths

# A voxel-size ratio (z over x) this much off the model's is worth a note at prediction.
RATIO_TOLERANCE = 1.5


def add_volume_options(parser: argparse.ArgumentParser, predict: bool = False) -> None:
    """--dims and --voxel-size (help from ModelConfig's fields)."""
    from ..config import ModelConfig

    dims_help = field_param(ModelConfig, "dims").help
    if predict:
        parser.add_argument("--dims", choices=DIMS_CHOICES, default="auto",
                            help="the model decides (a 2D model predicts a volume plane by plane, a 3D model needs "
                                 "volumes); 2d or 3d only checks that the model is that kind")
    else:
        parser.add_argument("--dims", choices=DIMS_CHOICES, default="auto",
                            help=f"{dims_help}; auto: 3d for a z-stack of enough slices (from the first image, or "
                                 "the --init/--resume checkpoint)")
    fallback = "the model's, compared with it" if predict else "isotropic"
    parser.add_argument("--voxel-size", nargs="+", metavar="Z Y X", default=None,
                        help=f"{field_param(ModelConfig, 'voxel_size').help}: 3 numbers, '4 1 1' or '4,1,1' (default: "
                             f"the file's metadata, else {fallback}); put it after the image files")


@dataclass(frozen=True)
class Volumes:
    """The resolved mode and voxel size of a run, and the note that says where they came from."""

    dims: str
    voxel: VoxelSize | None  # None: 2D and no voxel size given
    note: str

    def apply(self, cfg: Any) -> Any:
        """Put them into `cfg.model` (a PretrainConfig or FinetuneConfig), validated; returns `cfg`."""
        cfg.model.dims = self.dims
        if self.voxel is not None:
            cfg.model.voxel_size = tuple(self.voxel.zyx)
        cfg.validate()
        return cfg


def volume_default_options(cls: type) -> tuple[dict[str, Any], dict[str, str]]:
    """`add_config_options` defaults and help notes for the fields whose 3D default differs from the 2D one."""
    three_d = volume_defaults(cls)
    notes = {}
    for path, name in FIELDS.items():
        flat, deep = default_of(cls, path), getattr(three_d, name)
        # patch_z means nothing in 2D; a default that is the same in both modes is said once.
        notes[path] = (f"default {deep}" if path == "data.patch_z" or flat == deep
                       else f"default {flat} in 2D, {deep} in 3D")
    return dict.fromkeys(FIELDS), notes


def take_volume_defaults(cfg: Any, args: argparse.Namespace) -> str:
    """In 3D, the volume defaults for --patch, --patch-z and --batch not given; a note saying which ('' if none)."""
    cls = type(cfg)
    applied = apply_volume_defaults(cfg, given_paths(cls, args))
    cfg.validate()
    flags = {opt.path: opt.flag for opt in getattr(args, OPTIONS_KEY, ()) if opt.cls is cls}
    return describe_applied(applied, cfg, flags)


def given_voxel_size(args: argparse.Namespace) -> VoxelSize | None:
    """--voxel-size as a VoxelSize, or None when not given; an `error:` for a bad value."""
    if getattr(args, "voxel_size", None) is None:
        return None
    try:
        return VoxelSize(parse_voxel_size(args.voxel_size), "--voxel-size")
    except ValueError as exc:
        raise TowerError(f"{exc}; put --voxel-size after the image files") from None


def checkpoint_model(path: str | None) -> dict[str, Any] | None:
    """The `model` config of a napari-tower checkpoint at `path` (None when not given)."""
    if not path:
        return None
    from ..model_bundle import ModelBundle

    try:
        return dict(ModelBundle.load(path).config.get("model") or {})
    except TowerError:  # not a checkpoint (or a damaged one): the training's own loader says so, in its words
        return None


def resolve_volumes(args: argparse.Namespace, images: Sequence[Any], start: str | None = None) -> Volumes:
    """The run's dims and voxel size from --dims/--voxel-size, the images and the checkpoint it `start`s from."""
    if not images:
        raise TowerError("no images given")
    first = images[0]
    model = checkpoint_model(start)
    if args.dims == "auto" and model is not None:
        dims = str(model.get("dims", "2d"))
        choice = DimsChoice(dims, f"{'3D' if dims == '3d' else '2D'}, as the model in {start} was trained")
    elif args.dims == "auto":
        choice = dims_of_image(first)
    else:
        choice = DimsChoice(args.dims, f"{args.dims.upper()} as asked (--dims {args.dims})")
    if model is not None and choice.dims != model.get("dims", "2d"):
        raise TowerError(f"--dims {args.dims} but {start} is a {str(model.get('dims', '2d')).upper()} model: use "
                         f"--dims auto (or {model.get('dims', '2d')}), or start from a {args.dims.upper()} model")
    given = given_voxel_size(args)
    if choice.dims == "2d":
        note = f"2D planes: {first.source}: {choice.reason}" if first.z_size > 1 or args.dims != "auto" else ""
        return Volumes("2d", given, note)
    for image in images:
        if image.z_size < 2:
            raise TowerError(f"{image.source} holds no volume (axes {image.axes}): 3D mode needs z-stacks; "
                             "give z-stacks only, or use --dims 2d")
    voxel = given or first.voxels
    if voxel is None and model is not None and model.get("voxel_size"):
        voxel = VoxelSize(tuple(float(v) for v in model["voxel_size"]), f"the model in {start}")  # type: ignore[arg-type]
    if voxel is None:
        voxel = VoxelSize(ISOTROPIC, "no metadata: assumed isotropic; give --voxel-size Z Y X if z spacing differs")
    note = f"3D volumes: {first.source}: {choice.reason}; voxel size {voxel.describe()}"
    others = [im.source for im in images[1:] if im.voxels is not None and given is None
              and abs(_ratio(im.voxels.zyx) / _ratio(voxel.zyx) - 1) > 0.1]
    if others:
        note += f"; note: {', '.join(others)} declare{'s' * (len(others) == 1)} another voxel size (not used)"
    return Volumes("3d", voxel, note)


def _ratio(zyx: Sequence[float]) -> float:
    """z spacing over the in-plane pixel size."""
    return float(zyx[0]) / float((zyx[1] * zyx[2]) ** 0.5)


def check_model_fits(model_config: dict[str, Any], image: Any, args: argparse.Namespace) -> str:
    """Predict: refuse an image a 3D model cannot read, or a --dims the model is not; a note ('' when none)."""
    model = dict(model_config.get("model") or {})
    dims = str(model.get("dims", "2d"))
    if args.dims != "auto" and args.dims != dims:
        raise TowerError(f"--dims {args.dims} but {args.model} is a {dims.upper()} model: the model decides; "
                         "drop --dims, or use a model trained in that mode")
    if dims == "2d":
        return f"2D model: predicting {image.source}'s {image.shape[0]} planes one by one" if image.z_size > 1 else ""
    if image.z_size < 2:
        raise TowerError(f"{args.model} is a 3D model but {image.source} holds no volume (axes {image.axes}): "
                         "give a z-stack, or use a 2D model")
    trained = tuple(float(v) for v in model.get("voxel_size", ISOTROPIC))
    voxel = given_voxel_size(args) or image.voxels
    if voxel is None:
        return f"3D model: {image.source} declares no voxel size; assuming the model's {'x'.join(map(str, trained))}"
    if max(_ratio(voxel.zyx) / _ratio(trained), _ratio(trained) / _ratio(voxel.zyx)) > RATIO_TOLERANCE:
        return (f"note: {image.source} has z spacing {_ratio(voxel.zyx):.3g} x its pixel size ({voxel.source}) but the "
                f"model learnt {_ratio(trained):.3g} x: resample the volume to match for the best results")
    return ""


def say(note: str, quiet: bool) -> None:
    """Print a note to stderr unless --quiet."""
    if note and not quiet:
        print(note, file=sys.stderr)


__all__ = ["Volumes", "add_volume_options", "check_model_fits", "given_voxel_size", "resolve_volumes", "say",
           "take_volume_defaults", "volume_default_options"]
