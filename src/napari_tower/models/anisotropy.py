"""Pooling factors for anisotropic volumes (issue 17).

Confocal and EM stacks often have a z step several times the pixel size. An
isotropic U-Net would pool z away after one or two levels while x and y still
hold detail; the usual rule (nnU-Net's) pools an axis only while its spacing is
at most twice the finest spacing, so voxels become near-isotropic first.
"""

from __future__ import annotations

from collections.abc import Sequence


def pool_schedule(voxel_size: Sequence[float] | None, depth: int, min_size: Sequence[int] | None = None
                  ) -> list[tuple[int, ...]]:
    """Per-level pooling factors (one per axis) for a volume of `voxel_size` (z, y, x).

    An axis is pooled by 2 at a level when its current spacing is at most twice
    the finest current spacing and, if `min_size` (the patch's size per axis) is
    given, when it still has at least 2 voxels after pooling. None means
    isotropic voxels.
    """
    spacing = [float(s) for s in (voxel_size or (1.0, 1.0, 1.0))]
    if any(s <= 0 for s in spacing):
        raise ValueError(f"voxel sizes must be positive, got {tuple(voxel_size or ())}")
    sizes = [int(s) for s in min_size] if min_size is not None else None
    pools: list[tuple[int, ...]] = []
    for _ in range(depth):
        finest = min(spacing)
        factors = []
        for axis, s in enumerate(spacing):
            pool = s <= 2 * finest + 1e-9
            if sizes is not None and sizes[axis] < 4:
                pool = False
            factors.append(2 if pool else 1)
        pools.append(tuple(factors))
        spacing = [s * f for s, f in zip(spacing, factors)]
        if sizes is not None:
            sizes = [s // f for s, f in zip(sizes, factors)]
    return pools


def conv_kernels(voxel_size: Sequence[float] | None, pools: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Per-level convolution kernel sizes (one per axis; depth + 1 levels) for a volume of `voxel_size`.

    A kernel spans 3 voxels along an axis only where that axis's spacing at the level is at most twice
    the finest, else 1 (nnU-Net's rule): at full resolution a 12x-anisotropic EM stack gets 1 x 3 x 3
    kernels, which cost a third of 3 x 3 x 3 and do not mix sections 12 pixels apart as if they were
    neighbours; 3D context comes in at the levels where z has become comparable.
    """
    spacing = [float(s) for s in (voxel_size or (1.0,) * len(pools[0] if pools else (1, 1, 1)))]
    kernels: list[tuple[int, ...]] = []
    for level in range(len(pools) + 1):
        finest = min(spacing)
        kernels.append(tuple(3 if s <= 2 * finest + 1e-9 else 1 for s in spacing))
        if level < len(pools):
            spacing = [s * f for s, f in zip(spacing, pools[level])]
    return kernels
