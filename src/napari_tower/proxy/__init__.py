"""Proxy-task corruptions (spec section 2): batched, seeded, CPU and CUDA.

TOWER uses non-linear remap + block masking; Models Genesis the remap, local shuffling and
in-/out-painting. `compose` applies a named set, `preview` shows each on one image.
"""

from .preview import preview
from .tasks import (
    GENESIS_TASKS,
    ORDER,
    TOWER_TASKS,
    block_mask,
    check_tasks,
    compose,
    inpaint,
    local_shuffle,
    nonlinear_remap,
    outpaint,
    structure_weights,
)

__all__ = [
    "GENESIS_TASKS",
    "ORDER",
    "TOWER_TASKS",
    "block_mask",
    "check_tasks",
    "compose",
    "inpaint",
    "local_shuffle",
    "nonlinear_remap",
    "outpaint",
    "preview",
    "structure_weights",
]
