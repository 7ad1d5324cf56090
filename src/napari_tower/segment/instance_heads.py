"""The instance heads by name: what `FinetuneConfig.instance_head` and a model's `instance_head` select."""

from __future__ import annotations

from ..config import INSTANCE_HEADS
from ..errors import TowerError
from .shape_heads import BOUNDARY, DistanceHead, InstanceHead
from .stardist import StarDistHead


def resolve_head(name: str, spatial_dims: int) -> str:
    """The head "auto" stands for: boundary, in 2D and 3D (the only head volumes train).

    In 2D the distance head finds objects better after one fine-tune (+4.8 object-F1 points over four sets), but
    retraining it from a correction can wreck it: on DSB2018 one full-rate step of the retrain's fresh optimiser
    turned every pixel foreground, and 50 steps left the other frames 13 points lower where the boundary head
    gained 3 (docs/benchmarks.md, issue 20). The correct-and-retrain loop is the product, so boundary stays the
    default until a distance model retrains safely; `spatial_dims` is kept for when the heads differ again.
    """
    if name != "auto":
        return name
    return BOUNDARY


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
