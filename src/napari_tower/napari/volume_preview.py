"""Corruption previews of a volume for 3D mode (issue 17): each proxy task on a (1, C, Z, Y, X) batch.

With the 3D proxy tasks (`napari_tower.proxy.tasks3d`, whose `compose` and `structure_weights` take 5-D
batches) every corruption is the one 3D pretraining applies: 3D block masks, 3D shuffling windows, boxes in
z too. Without them the 2D tasks run slice by slice with one seed, so the preview still shows a volume.
No Qt here; the widget shows the result as 3D layers (`training.show_previews`).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from ..proxy import TOWER_TASKS
from ..proxy import preview as preview_plane

PREVIEW_TASKS = ("nonlinear", "masking", "shuffle", "inpaint", "outpaint")
# Slices a volume preview shows at most, centred on the viewer's slice: the 3D tasks run on the whole crop.
MAX_PREVIEW_SLICES = 64


def has_3d_tasks() -> bool:
    """Whether this napari-tower has the 3D proxy tasks."""
    return importlib.util.find_spec("napari_tower.proxy.tasks3d") is not None


def z_window(z: int, size: int, most: int = MAX_PREVIEW_SLICES) -> tuple[int, int]:
    """First slice and count of at most `most` slices of `size` around slice `z`."""
    n = min(size, most)
    z0 = int(np.clip(z - n // 2, 0, size - n))
    return z0, n


def preview_volume(volume: np.ndarray, seed: int = 0) -> tuple[dict[str, np.ndarray], bool]:
    """Each proxy task's corruption of a (C, Z, Y, X) volume in [0, 1], plus "tower" (TOWER's remap + masking).

    Returns float32 (C, Z, Y, X) arrays by name and whether the 3D tasks made them (False: 2D tasks slice-wise).
    """
    x = np.nan_to_num(np.asarray(volume, np.float32), nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
    if has_3d_tasks():
        return _with_3d_tasks(x, seed), True
    # TODO(issue 17): once the 3D proxy tasks are on main this branch is only for napari-tower builds without them.
    return _slice_wise(x, seed), False


def _with_3d_tasks(volume: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    from ..proxy import compose, structure_weights

    x = torch.from_numpy(np.ascontiguousarray(volume))[None]  # (1, C, Z, Y, X)
    weights = structure_weights(x)
    views: dict[str, np.ndarray] = {}
    for i, name in enumerate((*PREVIEW_TASKS, "tower")):
        tasks = TOWER_TASKS if name == "tower" else (name,)
        view = x
        for attempt in range(8):  # a view equal to the input (a near-identity curve) is redrawn, as in 2D
            gen = torch.Generator().manual_seed(int(seed) * 1009 + i * 101 + attempt)
            view = compose(x, tasks, gen, weights=weights, force=True)
            if not torch.equal(view, x):
                break
        views[name] = view[0].clamp(0.0, 1.0).numpy().astype(np.float32)
    return views


def _slice_wise(volume: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    slices = [preview_plane(volume[:, z], seed=seed) for z in range(volume.shape[1])]
    return {name: np.stack([s[name] for s in slices], axis=1).reshape(volume.shape) for name in slices[0]}
