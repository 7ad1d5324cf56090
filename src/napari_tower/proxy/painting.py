"""In-painting and out-painting (Models Genesis): blocks inside, or everything outside them, filled with noise."""

from __future__ import annotations

import torch

from .draws import _chance, _check_p, _rand
from .structure import _check_batch

# Models Genesis's probabilities: a sample is painted with PAINT_P, in-painted with a share INPAINT_SHARE of that.
PAINT_P = 0.9
INPAINT_SHARE = 0.2
INPAINT_P = PAINT_P * INPAINT_SHARE
OUTPAINT_P = PAINT_P * (1.0 - INPAINT_SHARE)


def boxes_alive(inner: torch.Tensor, outer: torch.Tensor, u_coin: torch.Tensor) -> torch.Tensor:
    """(N, K) bool: which of a sample's K boxes exist. The first always for out-painting (the kept window), for
    in-painting while a 0.95 coin holds; each further box while the coins keep holding (Models Genesis)."""
    coins = u_coin < 0.95
    first = outer | (inner & coins[:, 0])
    return torch.cat([first[:, None], coins[:, 1:]], dim=1).cumprod(dim=1).bool()


def box_axis(size: int, outer: torch.Tensor, u_side: torch.Tensor, u_pos: torch.Tensor) -> torch.Tensor:
    """(N, size, K) bool: which positions along one axis of length `size` each box covers. In-painting boxes
    span a sixth to a third of the axis, out-painting windows the axis minus 3/7..4/7 of it, with Genesis's
    3-pixel margin (less where the axis is short); `u_side`, `u_pos` ((N, K) uniforms) pick side and start."""
    lo_in, hi_in = max(1, size // 6), max(1, size // 3)
    lo_out, hi_out = max(1, size - 4 * size // 7), max(1, size - 3 * size // 7)
    lo = torch.where(outer, lo_out, lo_in)[:, None]
    hi = torch.where(outer, hi_out, hi_in)[:, None]
    margin = torch.where(outer, min(3, max(0, (size - hi_out) // 2)), min(3, max(0, (size - hi_in) // 2)))[:, None]
    side = torch.minimum(lo + (u_side * (hi - lo + 1)).long(), hi)
    room = (size - side - 2 * margin).clamp_min(0)
    start = margin + torch.minimum((u_pos * (room + 1)).long(), room)
    coords = torch.arange(size, device=outer.device)[None, :, None]
    return (coords >= start[:, None, :]) & (coords < (start + side)[:, None, :])


def _paint_mask(gen: torch.Generator, inner: torch.Tensor, outer: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 1, H, W) bool: the pixels to fill with noise, in-painting `inner` samples and
    out-painting `outer` ones ((N,) bool each, exclusive), as in Models Genesis:

    - in-painting: while fewer than 5 blocks and a 0.95 coin holds, a block of side H/6..H/3
      (21..42 px at 128) is filled;
    - out-painting: everything is filled except one window of side H - (3H/7..4H/7) (55..74 px
      at 128) and up to 4 more, each while a 0.95 coin holds.

    Boxes keep Genesis's 3 px margin. The union of a sample's 5 boxes is a batched matrix product
    of per-box row and column indicators (coverage > 0).
    """
    dev = inner.device
    n, k = inner.shape[0], 5
    u = _rand(gen, (n, k, 5), dev)
    alive = boxes_alive(inner, outer, u[..., 4])
    in_rows = box_axis(h, outer, u[..., 0], u[..., 1]) & alive[:, None, :]
    in_cols = box_axis(w, outer, u[..., 2], u[..., 3])
    covered = torch.bmm(in_rows.float(), in_cols.transpose(1, 2).float()) > 0.5  # (N, H, W)
    return ((covered ^ outer[:, None, None]) & (inner | outer)[:, None, None])[:, None]


def _fill_noise(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """`x` with uniform noise where `mask` ((N, 1, H, W)) is set, drawing only the noise needed."""
    mask = mask.expand(x.shape)
    count = int(torch.count_nonzero(mask))
    if count == 0:
        return x.clone()
    return x.masked_scatter(mask, _rand(gen, (count,), x.device).to(x.dtype))


def inpaint(x: torch.Tensor, gen: torch.Generator, p: float = INPAINT_P) -> torch.Tensor:
    """In-painting: up to 5 blocks of side H/6..H/3 (21..42 px at 128) filled with uniform noise.

    Applied per sample with probability `p` (Genesis: 0.9 x 0.2); as in Genesis each block
    (the first included) is added while a 0.95 coin comes up, so a sample gets 0 to 5 blocks.
    """
    n, c, h, w = _check_batch(x)
    _check_p(p)
    chosen = _chance(gen, n, p, x.device)
    return _fill_noise(x, _paint_mask(gen, chosen, torch.zeros_like(chosen), h, w), gen)


def outpaint(x: torch.Tensor, gen: torch.Generator, p: float = OUTPAINT_P) -> torch.Tensor:
    """Out-painting: uniform noise everywhere except 1..5 windows of side 55..74 px (at 128) kept.

    Applied per sample with probability `p` (Genesis: 0.9 x 0.8).
    """
    n, c, h, w = _check_batch(x)
    _check_p(p)
    chosen = _chance(gen, n, p, x.device)
    return _fill_noise(x, _paint_mask(gen, torch.zeros_like(chosen), chosen, h, w), gen)
