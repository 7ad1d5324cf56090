"""Proxy-task corruptions (spec section 2): batched, seeded, CPU and CUDA, in 2D and 3D.

TOWER uses non-linear remap + block masking; Models Genesis the remap, local shuffling and
in-/out-painting. `compose` applies a named set to a (N, C, Y, X) batch or a (N, C, Z, Y, X)
batch of volumes (issue 17); `preview` shows each on one image.
"""

from .preview import preview
from .tasks import (
    GENESIS_TASKS,
    ORDER,
    TOWER_TASKS,
    block_mask,
    check_tasks,
    inpaint,
    local_shuffle,
    nonlinear_remap,
    outpaint,
)
from .tasks3d import (
    block_mask3d,
    compose,
    compose3d,
    inpaint3d,
    local_shuffle3d,
    nonlinear_remap3d,
    outpaint3d,
    structure_weights,
    structure_weights3d,
)

__all__ = [
    "GENESIS_TASKS",
    "ORDER",
    "TOWER_TASKS",
    "block_mask",
    "block_mask3d",
    "check_tasks",
    "compose",
    "compose3d",
    "inpaint",
    "inpaint3d",
    "local_shuffle",
    "local_shuffle3d",
    "nonlinear_remap",
    "nonlinear_remap3d",
    "outpaint",
    "outpaint3d",
    "preview",
    "structure_weights",
    "structure_weights3d",
]
