"""Non-linear intensity remap (Models Genesis, TOWER): a random monotone Bezier curve per sample, applied
through a lookup table."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..errors import TowerError
from .draws import _check_p, _rand
from .structure import _check_batch, _float32

# Models Genesis's probability.
NONLINEAR_P = 0.9


@functools.lru_cache(maxsize=8)
def _curve_map(n_times: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (7, 2 T) and bias (2 T) that turn control points into sampled curves.

    For features (P1x, P1y, P2x, P2y, v, v P1y, v P2y), v = 1 for an inverted curve, the product
    ``bias + features @ weights`` holds x(t_j), y_j pairs at `n_times` values t_j of the cubic
    Bezier through (0, 0), P1, P2, (1, 1), where y_j is y(t_j), or y(1 - t_j) for an inverted
    curve: one matrix product for a whole batch of curves.
    """
    t = torch.linspace(0.0, 1.0, n_times, dtype=torch.float64)
    b1, b2, b3, b0 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3, (1 - t) ** 3
    z = torch.zeros_like(t)
    # y(1 - t) swaps the roles of P1 and P2 and of (0, 0) and (1, 1): b1(1 - t) = b2(t), b3(1 - t) = b0(t)
    rows = [(b1, z), (z, b1), (b2, z), (z, b2), (z, b0 - b3), (z, b2 - b1), (z, b1 - b2)]
    weights = torch.stack([torch.stack(pair, dim=1).reshape(-1) for pair in rows])  # (x, y) interleaved
    bias = torch.stack([b3, b3], dim=1).reshape(-1)
    return weights.to(device, torch.float32), bias.to(device, torch.float32)


@functools.lru_cache(maxsize=8)
def _lut_grid(lut_size: int, device: torch.device) -> torch.Tensor:
    """The LUT's intensity grid i / (L - 1), shape (1, L)."""
    return torch.linspace(0.0, 1.0, lut_size, device=device)[None, :]


def _bezier_lut(points: torch.Tensor, invert: torch.Tensor, n_times: int, lut_size: int) -> torch.Tensor:
    """(N, lut_size) values of the Genesis curve on a uniform grid of intensities in [0, 1].

    `points` (N, 4) holds P1x, P1y, P2x, P2y. The curve is the cubic Bezier through (0, 0), P1,
    P2, (1, 1) sampled at `n_times` values of t and linearly interpolated (np.interp in Genesis).
    As in Models Genesis, the non-inverted curve pairs sorted x with sorted y, and the inverted
    one sorts x only, which pairs ascending x with the y values in reverse-t order. With control
    points in the unit square x(t) and y(t) are non-decreasing, so "sorted" is the t order.
    The work is two dozen small tensor operations for the whole batch, whatever N is.
    """
    n = points.shape[0]
    weights, bias = _curve_map(n_times, points.device)
    grid = _lut_grid(lut_size, points.device)
    points = points.float()
    flip = invert.to(points.dtype)[:, None]
    features = torch.cat([points, flip, points[:, 1::2] * flip], dim=1)
    curves = torch.addmm(bias, features, weights).clamp_(0.0, 1.0)  # (N, 2T): x0, y0, x1, y1, ...
    xs = curves[:, 0::2]
    # searchsorted(xs, grid) for the uniform grid i / (L - 1) by counting: the samples below
    # grid point i are those whose bucket floor(x * (L - 1)) + 1 is <= i (x >= 0, so long() floors).
    # scatter_add, not bincount: bincount syncs with the host on CUDA and MPS to size its output.
    bucket = (xs * (lut_size - 1)).long().add_(1)
    counts = torch.zeros(n, lut_size + 1, dtype=torch.long, device=points.device)
    counts.scatter_add_(1, bucket, torch.ones_like(bucket))
    lo = counts[:, :lut_size].cumsum(dim=1).clamp_(1, n_times - 1).sub_(1)
    # the (x, y) pairs on both sides of each grid point, gathered as one 64-bit word each
    # (an int64 view: MPS has no float64)
    pairs = curves.view(torch.int64)
    left = pairs.gather(1, lo).view(torch.float32).view(n, lut_size, 2)
    step = pairs.gather(1, lo.add_(1)).view(torch.float32).view(n, lut_size, 2).sub_(left)
    frac = ((grid - left[..., 0]) / step[..., 0].clamp_min(1e-12)).clamp_(0.0, 1.0)
    return torch.addcmul(left[..., 1], frac, step[..., 1]).clamp_(0.0, 1.0)


def _draw_curves(x: torch.Tensor, gen: torch.Generator, p: float, invert_p: float, n_times: int,
                 lut_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's random curve as an (N, lut_size) table, and (N,) bool: which samples it remaps."""
    _check_p(p)
    _check_p(invert_p, "invert_p")
    if n_times < 2 or lut_size < 2:
        raise TowerError("n_times and lut_size must be at least 2")
    u = _rand(gen, (x.shape[0], 6), x.device)
    return _bezier_lut(u[:, :4], u[:, 5] < invert_p, n_times, lut_size), u[:, 4] < p


def _lookup(x: torch.Tensor, lut: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Each sample's pixels, clipped to [0, 1], mapped through its table by linear interpolation.

    With `shift` ((N, 1, H / s, 1, W) table entries to add along pixel rows of s-pixel cells),
    pixels shifted by at least the table length read a zero region appended to the table: that is
    how `compose` masks cells within this single pass over the pixels.
    """
    n, c, h, w = x.shape
    size = lut.shape[1]
    # pad with zeros: entry L - 1 gets a zero slope at x == 1 (frac is 0 there), shifted pixels read 0
    table = F.pad(lut, (0, 1 if shift is None else size + 1))
    slope = table.diff(dim=1)
    pos = x.reshape(n, -1).float().clamp(0.0, 1.0)
    if shift is None:
        pos.mul_(size - 1)
    else:
        rows = pos.view(n, c, shift.shape[2], -1, w)
        torch.add(shift, rows, alpha=size - 1, out=rows)
    # float -> int64 is not vectorised on CPUs without AVX-512; float -> int32 -> int64 is, and faster
    cell = pos.to(torch.int32).long()
    # in place into the first gather's result: one temporary fewer
    return table.gather(1, cell).addcmul_(pos.frac_(), slope.gather(1, cell)).view(x.shape).to(x.dtype)


@_float32
def nonlinear_remap(x: torch.Tensor, gen: torch.Generator, p: float = NONLINEAR_P, *,
                    invert_p: float = 0.5, n_times: int = 1000, lut_size: int = 1025) -> torch.Tensor:
    """Models Genesis's non-linear intensity transform, one random Bezier curve per sample.

    P1, P2 are uniform in the unit square; with probability `invert_p` the curve is inverted
    (intensity order reversed); the same curve maps every channel of a sample; each sample is
    transformed with probability `p`. The curve is sampled at `n_times` points (as np.interp in
    Genesis) and tabulated on a uniform grid of `lut_size` intensities, so mapping a pixel is
    one linear interpolation in that table. Transformed samples are in [0, 1] (inputs are
    clipped first); the others are returned unchanged.
    """
    _check_batch(x)
    lut, apply = _draw_curves(x, gen, p, invert_p, n_times, lut_size)
    if not bool(apply.any()):
        return x
    out = _lookup(x, lut)
    if not bool(apply.all()):
        keep = ~apply
        out[keep] = x[keep]  # copies only the untouched samples, not a where over the batch
    return out
