"""Block masking (TOWER): cells of the patch hidden at random, steered by the structure prior."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import TowerError
from .draws import _noise_like, _rand
from .structure import _check_batch, _float32


def _masked_cells(gen: torch.Generator, n: int, ncell: int, k: int, device: torch.device,
                  cell_weights: torch.Tensor | None, floor: float) -> torch.Tensor:
    """(N, k) indices of the cells to mask in each sample: k distinct cells (weighted without replacement)."""
    u = _rand(gen, (n, ncell), device)
    k = min(max(k, 0), ncell)
    if cell_weights is None:
        keys = u
    else:
        # Efraimidis-Spirakis sampling without replacement: key = log(u) / pi, keep the k largest.
        # pi mixes a uniform share `floor` with the normalised structure score.
        wsum = cell_weights.sum(dim=1, keepdim=True)
        share = torch.where(wsum > 0, cell_weights / wsum.clamp_min(1e-12),
                            torch.full_like(cell_weights, 1.0 / ncell))
        pi = floor / ncell + (1.0 - floor) * share
        keys = torch.log(u.clamp_min(1e-30)) / pi.clamp_min(1e-30)
    return torch.topk(keys, k, dim=1, sorted=False).indices  # the set is all that matters: no sort


def check_mask_options(ratio: float, fill: str, floor: float) -> None:
    """Block masking's options, checked alike for planes and volumes."""
    if not 0.0 <= ratio <= 1.0:
        raise TowerError(f"ratio={ratio} is invalid: use the masked share of cells, in [0, 1]")
    if fill not in ("zero", "noise"):
        raise TowerError(f"fill='{fill}' is invalid: use 'zero' or 'noise'")
    if not 0.0 <= floor <= 1.0:
        raise TowerError(f"floor={floor} is invalid: use a value in [0, 1]")


def _draw_mask(x: torch.Tensor, gen: torch.Generator, cell: int, ratio: float, fill: str,
               weights: torch.Tensor | None, floor: float) -> tuple[torch.Tensor, int, int]:
    """Checks `block_mask`'s arguments and draws its cells: (N, k) masked cell indices, grid height and width."""
    n, c, h, w = _check_batch(x)
    if cell < 1:
        raise TowerError(f"cell={cell} is invalid: use a positive cell size in pixels")
    check_mask_options(ratio, fill, floor)
    dev = x.device
    gh, gw = math.ceil(h / cell), math.ceil(w / cell)
    cell_w = None
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or weights.ndim != 4 or weights.shape[0] != n \
                or weights.shape[1] != 1 or tuple(weights.shape[2:]) not in ((h, w), (gh, gw)):
            got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
            raise TowerError(f"weights must have shape ({n}, 1, {h}, {w}) like the batch "
                             f"or ({n}, 1, {gh}, {gw}) like its cells, got {got}")
        wt = weights.to(device=dev, dtype=torch.float32).clamp_min(0.0)
        if tuple(weights.shape[2:]) != (gh, gw) or (gh, gw) == (h, w):
            wt = F.avg_pool2d(wt, cell, stride=cell, ceil_mode=True)
        cell_w = wt.reshape(n, gh * gw)
    k = round(ratio * gh * gw)
    return _masked_cells(gen, n, gh * gw, k, dev, cell_w, float(floor)), gh, gw


def _along_rows(values: torch.Tensor, gh: int, gw: int, cell: int) -> torch.Tensor:
    """(N, gh * gw) per-cell values as (N, 1, gh, 1, gw * cell): one value per cell-wide run of a pixel row.

    Broadcasting that over an (N, C, gh, cell, W) view runs inner loops over W contiguous pixels;
    a 6-D per-cell view runs `cell`-pixel loops, which costs more than the extra memory.
    """
    n = values.shape[0]
    return values.view(n, 1, gh, 1, gw, 1).expand(n, 1, gh, 1, gw, cell).reshape(n, 1, gh, 1, gw * cell)


@_float32
def block_mask(x: torch.Tensor, gen: torch.Generator, cell: int = 8, ratio: float = 0.25,
               fill: str = "zero", weights: torch.Tensor | None = None, floor: float = 0.25) -> torch.Tensor:
    """Block masking: a grid of `cell`-pixel cells, `ratio` of them set to 0 or uniform noise.

    Exactly round(ratio * cells) cells are masked in each sample (all channels). Without
    `weights` the cells are uniform; with `weights` ((N, 1, H, W) non-negative, e.g.
    `structure_weights(x)`), cells are drawn without replacement with probability proportional to
    ``floor / cells + (1 - floor) * w_cell / sum(w)``, so structured cells are masked more often,
    background still with a `floor` share, and the masked fraction stays `ratio`.
    """
    masked, gh, gw = _draw_mask(x, gen, cell, ratio, fill, weights, floor)
    n, c, h, w = x.shape
    if fill == "zero" and h % cell == 0 and w % cell == 0:
        keep = torch.ones(n, gh * gw, dtype=x.dtype, device=x.device).scatter_(1, masked, 0.0)
        return (x.reshape(n, c, gh, cell, w) * _along_rows(keep, gh, gw, cell)).view(x.shape)
    cells = torch.zeros(n, gh * gw, dtype=torch.bool, device=x.device).scatter_(1, masked, True)
    mask = cells.view(n, 1, gh, 1, gw, 1).expand(n, 1, gh, cell, gw, cell)
    mask = mask.reshape(n, 1, gh * cell, gw * cell)[:, :, :h, :w]
    if fill == "zero":
        return x.masked_fill(mask, 0.0)
    return torch.where(mask, _noise_like(x, gen), x)
