"""The patch, slices per patch and batch a 3D run uses where the user set none (issue 17).

The config defaults (patch 128, batch 16 for pretraining and 8 for fine-tuning, 16 slices per 3D patch) are
2D settings: with 16 slices a 3D step would hold 16x the voxels of a 2D one, minutes per step on a laptop CPU.
A run whose model is 3D therefore takes the values below for the fields the user left alone; the front ends
(`cli/volumes.py`, the widget's `napari/training.py`) call `apply_volume_defaults` after the mode is known, so
the config the checkpoint saves holds the values the run used. Figures behind them: docs/benchmarks.md, "3D
training speed on a CPU" (`benchmarks/bench_3d_speed.py`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from .config import FinetuneConfig, PretrainConfig
from .params import default_of


@dataclass(frozen=True)
class VolumeDefaults:
    """A 3D run's patch side, slices per patch and patches per step."""

    patch: int
    patch_z: int
    batch: int

    def describe(self) -> str:
        """"4 x 128 x 128 sub-volumes, batch 2" (z first)."""
        return f"{self.patch_z} x {self.patch} x {self.patch} sub-volumes, batch {self.batch}"


# Fine-tuning: 2 x 128 x 128 x 4 voxels a step, the 2D default step's (8 x 128 x 128), so a 3D step costs about
# what a 2D one does. Pretraining: 4 x 64 x 64 x 16, a quarter of the 2D step (16 x 128 x 128), with the
# 16 slices its 3D corruptions and z pooling need.
FINETUNE_3D = VolumeDefaults(patch=128, patch_z=4, batch=2)
PRETRAIN_3D = VolumeDefaults(patch=64, patch_z=16, batch=4)

# The fields they replace (dotted paths in PretrainConfig / FinetuneConfig), with their VolumeDefaults names.
FIELDS = {"data.patch": "patch", "data.patch_z": "patch_z", "batch": "batch"}


def volume_defaults(cls: type) -> VolumeDefaults:
    """The 3D defaults of a PretrainConfig or FinetuneConfig class."""
    if issubclass(cls, PretrainConfig):
        return PRETRAIN_3D
    if issubclass(cls, FinetuneConfig):
        return FINETUNE_3D
    raise TypeError(f"no 3D defaults for {cls.__name__}")


def left_at_default(cfg: Any) -> set[str]:
    """The fields of `FIELDS` that hold their config class's (2D) default."""
    return {path for path in FIELDS if _get(cfg, path) == default_of(type(cfg), path)}


def apply_volume_defaults(cfg: PretrainConfig | FinetuneConfig, given: Collection[str] | None = None
                          ) -> dict[str, int]:
    """In a 3D run, set the patch, slices per patch and batch the user did not give to the 3D defaults.

    `given` names the fields the user set (dotted paths, e.g. from the command line); None means "every field
    that differs from its class's default" (the widget, whose controls always hold a value). A 2D run is left
    as it is. Returns the fields changed and their new values ({} when none), for a note that makes the run
    reproducible.
    """
    if cfg.model.spatial_dims != 3:
        return {}
    defaults = volume_defaults(type(cfg))
    untouched = left_at_default(cfg) if given is None else set(FIELDS) - set(given)
    applied: dict[str, int] = {}
    for path in [p for p in FIELDS if p in untouched]:  # FIELDS' order: patch, slices, batch
        value = getattr(defaults, FIELDS[path])
        if _get(cfg, path) != value:
            _set(cfg, path, value)
            applied[path] = value
    return applied


def describe_applied(applied: dict[str, int], cfg: Any, flags: dict[str, str] | None = None) -> str:
    """A note naming the 3D defaults a run took ('' when none), with the options that change them."""
    if not applied:
        return ""
    names = {"data.patch": "patch {}", "data.patch_z": "{} slices per patch", "batch": "batch {}"}
    what = ", ".join(names[p].format(v) for p, v in applied.items())
    how = f" (set {', '.join(flags[p] for p in applied)} to change)" if flags else ""
    run = "fine-tuning" if isinstance(cfg, FinetuneConfig) else "pretraining"
    return f"3D {run} defaults for a CPU: {what}{how}"


def _get(cfg: Any, path: str) -> Any:
    obj = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(cfg: Any, path: str, value: Any) -> None:
    *parents, name = path.split(".")
    obj = cfg
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, name, value)


__all__ = ["FIELDS", "FINETUNE_3D", "PRETRAIN_3D", "VolumeDefaults", "apply_volume_defaults", "describe_applied",
           "left_at_default", "volume_defaults"]
