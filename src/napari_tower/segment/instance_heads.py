"""The instance heads by name: what `FinetuneConfig.instance_head` and a model's `instance_head` select."""

from __future__ import annotations

from ..config import INSTANCE_HEADS
from ..errors import TowerError
from .shape_heads import BOUNDARY, DistanceHead, InstanceHead
from .stardist import StarDistHead


def resolve_head(name: str, spatial_dims: int) -> str:
    """The head "auto" stands for: distance in 2D, where it beat boundary + watershed on tissue nuclei and
    touching cells (docs/benchmarks.md, issue 20); boundary in 3D, the only head volumes train."""
    if name != "auto":
        return name
    return BOUNDARY if spatial_dims == 3 else "distance"


def head_for(name: str | None) -> InstanceHead | None:
    """The shape-aware head called `name`; None for the boundary head (or a model without one)."""
    if name in (None, BOUNDARY):
        return None
    if name == "distance":
        return DistanceHead()
    if name == "stardist":
        return StarDistHead()
    raise TowerError(f"unknown instance head '{name}': choose one of {', '.join(INSTANCE_HEADS)}")


__all__ = ["INSTANCE_HEADS", "head_for", "resolve_head"]
