"""Proxy-task corruptions T(x) of spec section 2, batched in torch.

Every function takes a float batch ``x`` of shape (N, C, H, W) with values in [0, 1] and a
``torch.Generator``; all randomness comes from that generator, so a seed reproduces the output
exactly (on one device and torch version). Random numbers are drawn on the generator's device
and moved to ``x.device``, so a CPU generator works for CUDA batches too. Each function returns
a new tensor of the same shape, dtype and device and never modifies ``x``.

Nothing here loops over samples in Python: the only Python loops are over small constant counts
(the five in-painting blocks, the three or four shuffling rounds), each batched over N.

Parameters are the spec's for a 128 x 128 patch (Models Genesis's 2D reading); block sizes scale
with the patch side and the shuffling window count with the patch area.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F

from ..config import PROXY_TASKS
from ..errors import TowerError
from .structure import _check_batch, _float32, structure_weights  # noqa: F401  (structure_weights: public)

REFERENCE_SIDE = 128  # the spec's parameters are for 128 x 128 patches
TOWER_TASKS = ("nonlinear", "masking")
GENESIS_TASKS = ("nonlinear", "shuffle", "inpaint", "outpaint")
ORDER = ("nonlinear", "shuffle", "masking", "inpaint", "outpaint")

# Models Genesis's probabilities.
NONLINEAR_P = 0.9
SHUFFLE_P = 0.5
PAINT_P = 0.9
INPAINT_SHARE = 0.2
INPAINT_P = PAINT_P * INPAINT_SHARE
OUTPAINT_P = PAINT_P * (1.0 - INPAINT_SHARE)


# ----------------------------------------------------------------------------------------------
# helpers


def _check_p(p: float, name: str = "p") -> None:
    if not 0.0 <= float(p) <= 1.0:
        raise TowerError(f"{name}={p} is not a probability: use a value in [0, 1]")


def _rand(gen: torch.Generator, shape: tuple[int, ...], device: torch.device,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn with `gen` on its own device, then moved to `device`."""
    u = torch.rand(shape, generator=gen, device=gen.device, dtype=dtype)
    return u if u.device == device else u.to(device)


def _randint(gen: torch.Generator, low, high, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Integers uniform in [low, high] (inclusive; `low`/`high` ints or broadcastable tensors)."""
    if isinstance(low, int) and isinstance(high, int):
        value = torch.randint(low, high + 1, shape, generator=gen, device=gen.device)
        return value if value.device == device else value.to(device)
    u = _rand(gen, shape, device)
    value = torch.floor(u * (high - low + 1)).long() + low
    return torch.minimum(value, torch.as_tensor(high, device=device))


def _chance(gen: torch.Generator, n: int, p: float, device: torch.device) -> torch.Tensor:
    """(N,) bool: which samples a task with probability `p` applies to."""
    if p >= 1.0:
        return torch.ones(n, dtype=torch.bool, device=device)
    return _rand(gen, (n,), device) < p


def _noise_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return _rand(gen, tuple(x.shape), x.device, torch.float32).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# non-linear intensity remap


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


# ----------------------------------------------------------------------------------------------
# block masking and the structure prior


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


def _draw_mask(x: torch.Tensor, gen: torch.Generator, cell: int, ratio: float, fill: str,
               weights: torch.Tensor | None, floor: float) -> tuple[torch.Tensor, int, int]:
    """Checks `block_mask`'s arguments and draws its cells: (N, k) masked cell indices, grid height and width."""
    n, c, h, w = _check_batch(x)
    if cell < 1:
        raise TowerError(f"cell={cell} is invalid: use a positive cell size in pixels")
    if not 0.0 <= ratio <= 1.0:
        raise TowerError(f"ratio={ratio} is invalid: use the masked share of cells, in [0, 1]")
    if fill not in ("zero", "noise"):
        raise TowerError(f"fill='{fill}' is invalid: use 'zero' or 'noise'")
    if not 0.0 <= floor <= 1.0:
        raise TowerError(f"floor={floor} is invalid: use a value in [0, 1]")
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


@functools.cache
def _keyword_defaults(fn) -> dict[str, object]:
    """The options `compose` may pass to a task function, with their defaults (its own signature)."""
    return {name: param.default for name, param in inspect.signature(fn).parameters.items()
            if param.default is not inspect.Parameter.empty and name != "weights"}


def _remap_and_mask_tables(x: torch.Tensor, gen: torch.Generator, remap: Mapping[str, object],
                           masking: Mapping[str, object], weights: torch.Tensor | None
                           ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`_lookup`'s table and shift for `block_mask(nonlinear_remap(x))`, or None where one pass does not apply.

    Draws the same random numbers in the same order as the two steps. Samples the remap skips
    get the identity table, which reproduces [0, 1]-clipped pixels exactly when lut_size - 1 is a
    power of two (the default 1025); masked cells are shifted into the table's zero region.
    """
    remap_defaults, mask_defaults = _keyword_defaults(nonlinear_remap), _keyword_defaults(block_mask)
    if set(remap) - set(remap_defaults) or set(masking) - set(mask_defaults):
        return None  # the two steps reject these
    r, m = {**remap_defaults, **remap}, {**mask_defaults, **masking}
    cell = m["cell"]
    n, c, h, w = x.shape
    if m["fill"] != "zero" or not isinstance(cell, int) or cell < 1 or h % cell or w % cell:
        return None  # the two steps handle these
    lut, apply = _draw_curves(x, gen, r["p"], r["invert_p"], r["n_times"], r["lut_size"])
    masked, gh, gw = _draw_mask(x, gen, cell, m["ratio"], m["fill"], weights, m["floor"])
    lut = torch.where(apply[:, None], lut, _lut_grid(r["lut_size"], x.device))
    shift = torch.zeros(n, gh * gw, device=x.device).scatter_(1, masked, float(r["lut_size"]))
    return lut, _along_rows(shift, gh, gw, cell)


# ----------------------------------------------------------------------------------------------
# local pixel shuffling


@functools.lru_cache(maxsize=16)
def _bank_layout(side: int, width: int, bank: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Fixed index tensors for `_permutation_bank` (they depend on the sizes only).

    The table has one row per (window shape, bank entry); a row holds one entry per window
    element (h * w of them, row-major), rows are stored back to back, shapes in the order
    ``(h - 1) * side + (w - 1)``.
    """
    s2 = side * side
    shape_id = torch.arange(s2, device=device)
    hs, ws = shape_id // side + 1, shape_id % side + 1
    area = hs * ws
    areas, area_of_shape = torch.unique(area, return_inverse=True)
    # orderings: one row per (area, b), `area` long, back to back
    order_len = areas.repeat_interleave(bank)
    order_start = torch.cumsum(order_len, 0) - order_len
    # table rows (shape, b)
    row_len = area.repeat_interleave(bank)
    row_start = torch.cumsum(row_len, 0) - row_len
    row_of_entry = torch.repeat_interleave(torch.arange(s2 * bank, device=device), row_len)
    j = torch.arange(row_of_entry.numel(), device=device) - row_start[row_of_entry]  # element index
    s, b = row_of_entry // bank, row_of_entry % bank
    pick = order_start[area_of_shape[s] * bank + b] + j
    w = ws[s]
    own = (j // w) * width + j % w  # image offset of element j from the window corner
    # image offset of element e of shape s from its corner, at [s * s2 + e]
    e = torch.arange(s2, device=device)
    offset = ((e[None, :] // ws[:, None]) * width + e[None, :] % ws[:, None]).reshape(-1)
    return areas, pick, s * s2, own, offset, row_start


def _permutation_bank(gen: torch.Generator, side: int, width: int, bank: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random window permutations as a flat table of source offsets, and each row's start.

    Row ``((h - 1) * side + (w - 1)) * bank + b`` (starting at ``starts[row]``) describes a
    uniformly random permutation of an h x w window: entry ``dy * w + dx`` holds the flat offset,
    in an image `width` pixels wide, from pixel (dy, dx) of the window to the window pixel whose
    value it receives. After the rows come side * side zeros: the identity, for cells left alone.
    """
    areas, pick, shape_base, own, offset, starts = _bank_layout(side, width, bank, torch.device(device))
    s2 = side * side
    # `bank` random permutations of all s2 cells; restricting one to the values below k (keeping
    # their order) gives a uniformly random ordering of 0..k-1 for every window area k at once
    # (so shapes of one area, and areas, share orderings; each window's is still uniform).
    base = _rand(gen, (bank, s2), device).argsort(dim=-1)  # (B, s2)
    expanded = base.expand(areas.numel(), bank, s2)
    orders = torch.masked_select(expanded, expanded < areas[:, None, None])  # rows (area, b), back to back
    src = orders.index_select(0, pick).add_(shape_base)  # element each table entry receives
    table = torch.zeros(pick.numel() + s2, dtype=torch.long, device=device)
    torch.sub(offset.index_select(0, src), own, out=table[:-s2])
    return table, starts


def _random_partition(gen: torch.Generator, m: int, length: int, side: int, slots: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split [0, length) into consecutive pieces of random size 1..side with a random phase.

    Returns per sample (M, slots) piece starts and clipped sizes (0 for unused slots), and
    (M, length) the piece index of each coordinate.
    """
    sizes = _randint(gen, 1, side, (m, slots), device)
    phase = torch.floor(_rand(gen, (m, 1), device) * sizes[:, :1]).long().clamp_max(sizes[:, :1] - 1)
    ends = sizes.cumsum(dim=1) - phase
    short = ends[:, -1:] < length  # rare (slots is generous): then that sample gets full-size pieces
    if bool(short.any()):
        sizes = torch.where(short, torch.full_like(sizes, side), sizes)
        ends = torch.where(short, sizes.cumsum(dim=1) - phase, ends)
    starts = (ends - sizes).clamp(0, length)
    clipped = ends.clamp(0, length) - starts
    coords = torch.arange(length, device=device).expand(m, length).contiguous()
    piece = torch.searchsorted(ends, coords, right=True)
    return starts, clipped, piece


def _piece_slots(length: int, side: int) -> int:
    """Room for the pieces of one axis: about 3.5 sd above the mean need at 128 px."""
    return math.ceil(1.3 * length / ((1 + side) / 2)) + 6


def _shuffle_rounds(gen: torch.Generator, rounds: int, m: int, h: int, w: int, side: int, bank: int,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """`rounds` random window grids for each of `m` samples (all rounds drawn at once)."""
    kb, kc = _piece_slots(h, side), _piece_slots(w, side)
    mr = rounds * m
    top, hc, band = _random_partition(gen, mr, h, side, kb, device)  # (MR,kb), (MR,kb), (MR,H)
    left, wc, piece = _random_partition(gen, mr, w, side, kc, device)  # (MR,kc), (MR,kc), (MR,W)
    valid = ((hc[:, :, None] > 0) & (wc[:, None, :] > 0)).view(mr, kb * kc)
    shape_id = ((hc - 1).clamp_min(0)[:, :, None] * side + (wc - 1).clamp_min(0)[:, None, :]).view(mr, kb * kc)
    pick = _randint(gen, 0, bank - 1, (mr, kb * kc), device)
    keys = _rand(gen, (mr, kb * kc), device)
    return dict(top=top, band=band, left=left, piece=piece, wc=wc, valid=valid, count=valid.sum(dim=1).view(rounds, m),
                cell=shape_id * bank + pick, keys=keys)


@_float32
def local_shuffle(x: torch.Tensor, gen: torch.Generator, p: float = SHUFFLE_P, n_windows: int = 1250,
                  max_side: int = 12, *, bank: int = 8) -> torch.Tensor:
    """Local pixel shuffling: about `n_windows` windows of side 1..`max_side` shuffled in place.

    Applied per sample with probability `p`. The window count is for a 128 x 128 patch and scales
    with the patch area (at least one window). Windows are applied in rounds: each round cuts the
    image into a random grid of windows (row bands and column pieces of independent random sizes
    1..max_side, random phase), and a random subset of them, so that each sample gets exactly its
    window count over all rounds, has its pixels permuted. Windows of one round are disjoint and
    later rounds shuffle the result of earlier ones (overlapping windows, applied in sequence, as
    in Models Genesis), so the whole image is always a permutation of the input: every window
    keeps the histogram of its content at the time it is shuffled, in every channel alike.

    Each window's permutation is uniformly random: it is drawn from a bank of `bank` fresh random
    permutations per window area made for this call (windows of a batch may share one).
    """
    n, c, h, w = _check_batch(x)
    _check_p(p)
    if max_side < 1:
        raise TowerError(f"max_side={max_side} is invalid: use a window side of at least 1 pixel")
    if n_windows < 0:
        raise TowerError(f"n_windows={n_windows} is invalid: use a count >= 0")
    if bank < 1:
        raise TowerError(f"bank={bank} is invalid: use at least 1 permutation per window shape")
    dev = x.device
    apply = _chance(gen, n, p, dev)
    n_eff = 0 if n_windows == 0 else max(1, round(n_windows * h * w / REFERENCE_SIDE ** 2))
    side = max(1, min(max_side, h, w))
    chosen = torch.nonzero(apply).flatten()
    m = int(chosen.numel())
    if m == 0 or n_eff == 0 or side == 1:
        return x.clone()  # windows of one pixel change nothing

    table, starts = _permutation_bank(gen, side, w, bank, dev)
    identity = table.numel() - side * side
    # 32-bit pixel indices save memory traffic (index_select takes them on the CPU)
    itype = torch.int32 if dev.type == "cpu" and n * h * w < 2 ** 31 else torch.long
    # Draw enough rounds at once (a round has about (h / mean side) * (w / mean side) windows),
    # and more in the rare case some sample is still short.
    mean_side = (1 + side) / 2
    per_round = max(1.0, 0.85 * (h / mean_side) * (w / mean_side))
    chunks = [_shuffle_rounds(gen, max(1, math.ceil(n_eff / per_round)), m, h, w, side, bank, dev)]
    while bool((torch.cat([ch["count"] for ch in chunks]).sum(dim=0) < n_eff).any()):
        chunks.append(_shuffle_rounds(gen, 1, m, h, w, side, bank, dev))
    rd = chunks[0] if len(chunks) == 1 else {k: torch.cat([ch[k] for ch in chunks]) for k in chunks[0]}
    kb, kc = _piece_slots(h, side), _piece_slots(w, side)
    count = rd["count"]  # (R, M)
    rounds = count.shape[0]
    need = torch.minimum((n_eff - (count.cumsum(dim=0) - count)).clamp_min(0), count)  # windows per round
    valid, keys = rd["valid"], rd["keys"]
    active = valid & (need.view(-1, 1) > 0)
    partial = ((need > 0) & (need < count)).view(-1)
    if bool(partial.any()):  # in a round with spare windows shuffle a random subset of `need`
        rows = torch.nonzero(partial).flatten()
        sub = torch.where(valid[rows], keys[rows], torch.full_like(keys[rows], 2.0))
        kth = sub.sort(dim=1).values.gather(1, (need.view(-1)[rows] - 1)[:, None])
        active[rows] = valid[rows] & (sub <= kth)
    # table row start of each cell's permutation; cells left alone use the identity
    row = torch.where(active, starts[rd["cell"]], torch.full_like(rd["cell"], identity))
    band, piece, mr = rd["band"], rd["piece"], rounds * m
    # per pixel (y, x) in cell (band(y), piece(x)) of width wc: row + dy * wc + dx
    dy = torch.arange(h, device=dev)[None, :] - rd["top"].gather(1, band)  # (MR, H)
    dx = (torch.arange(w, device=dev)[None, :] - rd["left"].gather(1, piece)).to(itype)  # (MR, W)
    by_row = row.view(mr, kb, kc).gather(1, band[:, :, None].expand(mr, h, kc))
    by_row = by_row.add_(dy[:, :, None] * rd["wc"][:, None, :]).to(itype)  # (MR, H, kc)
    index = by_row.gather(2, piece[:, None, :].expand(mr, h, w)).add_(dx[:, None, :])
    # source pixel of every pixel, as a flat index into the (M * H * W) pixels of the batch
    src = table.to(itype).index_select(0, index.view(-1)).view(rounds, m * h * w)
    src.add_(torch.arange(m * h * w, device=dev, dtype=itype))
    used = [r for r, k in enumerate(need.sum(dim=1).tolist()) if k > 0]
    if c == 1:  # apply the rounds to the pixel values directly
        values = (x if m == n else x.index_select(0, chosen)).reshape(-1)
        for r in used:
            values = values.index_select(0, src[r])
    else:  # compose the rounds, then move all channels at once
        source = src[used[0]]  # pixel q of the result takes the input's pixel source[q]
        for r in used[1:]:
            source = source.index_select(0, src[r])
        picked = (x if m == n else x.index_select(0, chosen)).transpose(0, 1).reshape(c, m * h * w)
        values = picked.index_select(1, source).view(c, m, h * w).transpose(0, 1)
    shuffled = values.reshape(m, c, h, w)
    if m == n:
        return shuffled  # a new tensor: every sample went through index_select
    out = x.clone()
    out.index_copy_(0, chosen, shuffled.reshape(m, c, h, w))
    return out


# ----------------------------------------------------------------------------------------------
# in-painting and out-painting


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
    coins = u[..., 4] < 0.95
    first = outer | (inner & coins[:, 0])
    alive = torch.cat([first[:, None], coins[:, 1:]], dim=1).cumprod(dim=1).bool()  # (N, K)

    def axis(size: int, lo_in: int, hi_in: int, lo_out: int, hi_out: int, u_side, u_pos):
        lo = torch.where(outer, lo_out, lo_in)[:, None]
        hi = torch.where(outer, hi_out, hi_in)[:, None]
        margin = torch.where(outer, min(3, max(0, (size - hi_out) // 2)), min(3, max(0, (size - hi_in) // 2)))[:, None]
        side = torch.minimum(lo + (u_side * (hi - lo + 1)).long(), hi)
        room = (size - side - 2 * margin).clamp_min(0)
        start = margin + torch.minimum((u_pos * (room + 1)).long(), room)
        coords = torch.arange(size, device=dev)[None, :, None]
        return (coords >= start[:, None, :]) & (coords < (start + side)[:, None, :])  # (N, size, K)

    in_rows = axis(h, max(1, h // 6), max(1, h // 3), max(1, h - 4 * h // 7), max(1, h - 3 * h // 7),
                   u[..., 0], u[..., 1]) & alive[:, None, :]
    in_cols = axis(w, max(1, w // 6), max(1, w // 3), max(1, w - 4 * w // 7), max(1, w - 3 * w // 7),
                   u[..., 2], u[..., 3])
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


# ----------------------------------------------------------------------------------------------
# composition


def check_tasks(tasks: Iterable[str] | str) -> tuple[str, ...]:
    """Validated task names as a tuple; unknown names raise TowerError listing the valid ones."""
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in PROXY_TASKS]
    if bad:
        raise TowerError(f"unknown proxy task(s) {', '.join(map(repr, bad))}: choose from {', '.join(PROXY_TASKS)}")
    return tasks


@_float32
def compose(x: torch.Tensor, tasks: Iterable[str] | str, gen: torch.Generator,
            weights: torch.Tensor | None = None, *, force: bool = False,
            options: Mapping[str, Mapping[str, object]] | None = None) -> torch.Tensor:
    """Apply the named proxy tasks to a batch in a fixed order; output clamped to [0, 1].

    Order: nonlinear, shuffle, masking, then painting. With both "inpaint" and "outpaint" listed
    they are exclusive as in Models Genesis: with probability 0.9 a sample is painted, in-painted
    with probability 0.2 and out-painted otherwise; one of them alone uses its spec probability
    (0.18 or 0.72). `weights` ((N, 1, H, W)) steers block masking to structured cells.
    `force=True` applies every listed task to every sample (painting still picks in- or out-
    painting at random) - for previews. `options` passes extra keyword arguments per task name,
    e.g. ``{"masking": {"fill": "noise"}}``.

    TOWER's default tasks are ("nonlinear", "masking"); Models Genesis uses
    ("nonlinear", "shuffle", "inpaint", "outpaint").
    """
    n, c, h, w = _check_batch(x)
    names = set(check_tasks(tasks))
    opts = {k: dict(v) for k, v in (options or {}).items()}
    unknown = set(opts) - set(PROXY_TASKS)
    if unknown:
        raise TowerError(f"options for unknown proxy task(s) {sorted(unknown)}: choose from {', '.join(PROXY_TASKS)}")
    out = x
    remap_kw = {"p": 1.0 if force else NONLINEAR_P, **opts.get("nonlinear", {})}
    if {"nonlinear", "masking"} <= names and "shuffle" not in names:
        tables = _remap_and_mask_tables(x, gen, remap_kw, opts.get("masking", {}), weights)
        if tables is not None:
            out = _lookup(x, *tables)
            names -= {"nonlinear", "masking"}
    if "nonlinear" in names:
        out = nonlinear_remap(out, gen, **remap_kw)
    if "shuffle" in names:
        kw = {"p": 1.0 if force else SHUFFLE_P, **opts.get("shuffle", {})}
        out = local_shuffle(out, gen, **kw)
    if "masking" in names:
        out = block_mask(out, gen, weights=weights, **opts.get("masking", {}))
    paint_in, paint_out = "inpaint" in names, "outpaint" in names
    if paint_in or paint_out:
        dev = x.device
        if paint_in and paint_out:
            painted = _chance(gen, n, 1.0 if force else PAINT_P, dev)
            share = _rand(gen, (n,), dev) < INPAINT_SHARE
            inner, outer = painted & share, painted & ~share
        else:
            default = INPAINT_P if paint_in else OUTPAINT_P
            p = 1.0 if force else float(opts.get("inpaint" if paint_in else "outpaint", {}).get("p", default))
            chosen = _chance(gen, n, p, dev)
            inner, outer = (chosen, torch.zeros_like(chosen)) if paint_in else (torch.zeros_like(chosen), chosen)
        out = _fill_noise(out, _paint_mask(gen, inner, outer, h, w), gen)
    return x.clamp(0.0, 1.0) if out is x else out.clamp_(0.0, 1.0)
