"""The structure prior's per-cell score, and the float32 guard every corruption runs under."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..errors import TowerError


def _float32(fn):
    """Run a corruption outside autocast: its tables and indices are computed with matrix products, which
    autocast would do in bfloat16, rounding indices past their tables (a CUDA device-side assert)."""

    @functools.wraps(fn)
    def wrapper(x: torch.Tensor, *args, **kwargs):
        with torch.autocast(x.device.type, enabled=False):
            return fn(x, *args, **kwargs)

    return wrapper


def _check_batch(x: torch.Tensor, name: str = "x") -> tuple[int, int, int, int]:
    if not isinstance(x, torch.Tensor):
        raise TowerError(f"{name} must be a torch tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise TowerError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TowerError(f"{name} must be a floating-point tensor in [0, 1], got dtype {x.dtype}")
    n, c, h, w = x.shape
    return n, c, h, w


@_float32
def structure_weights(x: torch.Tensor, cell: int = 8, per_cell: bool = False) -> torch.Tensor:
    """(N, 1, H, W) structure score in [0, 1]: local variance over `cell` x `cell` cells.

    Variance is E[x^2] - E[x]^2 per cell (averaged over channels), broadcast to the cell's pixels
    and divided by each sample's maximum. Flat samples get all zeros. This is the "prior
    knowledge" of the spec: masking and patch sampling prefer cells with structure.
    With `per_cell` the scores stay on the (N, 1, ceil(H / cell), ceil(W / cell)) cell grid, which
    `block_mask` takes as it is (the training hot path: no upsampling and pooling back).
    """
    n, c, h, w = _check_batch(x)
    if cell < 1:
        raise TowerError(f"cell={cell} is invalid: use a positive cell size in pixels")
    xf = x.float()
    mean = F.avg_pool2d(xf, cell, stride=cell, ceil_mode=True)
    sq = F.avg_pool2d(xf * xf, cell, stride=cell, ceil_mode=True)
    var = sq - mean * mean
    var = torch.where(var > 1e-6 * sq, var, torch.zeros_like(var)).mean(dim=1, keepdim=True)  # rounding -> 0
    peak = var.flatten(1).amax(dim=1)[:, None, None, None]
    score = torch.where(peak > 0, var / peak.clamp_min(1e-30), torch.zeros_like(var))
    if per_cell:
        return score.to(x.dtype).contiguous()
    score = score.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3)[:, :, :h, :w]
    return score.to(x.dtype).contiguous()
