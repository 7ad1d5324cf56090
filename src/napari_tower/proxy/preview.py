"""One image, every proxy task: what the corruptions look like (for the widget and the CLI)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import TowerError
from .tasks import (
    TOWER_TASKS,
    block_mask,
    compose,
    inpaint,
    local_shuffle,
    nonlinear_remap,
    outpaint,
    structure_weights,
)

PREVIEW_ATTEMPTS = 8


def _as_batch(image: np.ndarray) -> tuple[torch.Tensor, tuple[int, ...]]:
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or min(arr.shape[-2:]) < 2:
        raise TowerError(f"preview needs one image of shape (H, W) or (C, H, W), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise TowerError(f"preview needs a numeric image, got dtype {arr.dtype}")
    data = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
    chw = data[None] if data.ndim == 2 else data
    return torch.from_numpy(np.ascontiguousarray(chw))[None], arr.shape


def preview(image: np.ndarray, seed: int = 0, tasks_default: Sequence[str] = TOWER_TASKS,
            structure_prior: bool = True) -> dict[str, np.ndarray]:
    """Each proxy task's corruption of one image, every task forced to apply.

    `image` is (H, W) or (C, H, W) float in [0, 1] (values outside are clipped). Returns float32
    arrays of the input's shape keyed "nonlinear", "masking", "shuffle", "inpaint", "outpaint"
    and "tower" (the combined `tasks_default` view, TOWER's non-linear remap + masking by default,
    with the structure prior steering the masking when `structure_prior`). A view that happens to
    equal the input (e.g. a near-identity curve) is redrawn with the next seed, a few times.
    """
    x, shape = _as_batch(image)
    weights = structure_weights(x) if structure_prior else None
    makers = {
        "nonlinear": lambda g: nonlinear_remap(x, g, p=1.0),
        "masking": lambda g: block_mask(x, g, weights=weights),
        "shuffle": lambda g: local_shuffle(x, g, p=1.0),
        "inpaint": lambda g: _inpaint_forced(x, g),
        "outpaint": lambda g: outpaint(x, g, p=1.0),
        "tower": lambda g: compose(x, tasks_default, g, weights=weights, force=True),
    }
    views: dict[str, np.ndarray] = {}
    for i, (name, make) in enumerate(makers.items()):
        view = x
        for attempt in range(PREVIEW_ATTEMPTS):
            gen = torch.Generator().manual_seed(int(seed) * 1009 + i * 101 + attempt)
            view = make(gen)
            if not torch.equal(view, x):
                break
        views[name] = view[0].clamp(0.0, 1.0).numpy().astype(np.float32).reshape(shape)
    return views


def _inpaint_forced(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # Genesis can draw zero in-painting blocks (5% of the time); a preview should show some.
    for _ in range(PREVIEW_ATTEMPTS):
        out = inpaint(x, gen, p=1.0)
        if not torch.equal(out, x):
            return out
    return out
