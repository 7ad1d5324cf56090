"""Proxy-task corruptions on volumes (issue 17): the 3D twins of `tasks.py`, batched in torch.

Every function takes a float batch ``x`` of shape (N, C, Z, Y, X) in [0, 1] and a
``torch.Generator`` (all randomness comes from it, drawn on its device), returns a new tensor
of the same shape, dtype and device, and runs in float32 outside autocast.

- `nonlinear_remap3d`: Models Genesis's Bezier curve per sample; elementwise, so it is the 2D
  function on a (N, C, Z * Y, X) view.
- `block_mask3d`: a grid of `cell_z` x `cell` x `cell` cells, a `ratio` of them blanked;
  `cell_z` smaller than `cell` keeps the cells physically cubic on anisotropic data.
- `local_shuffle3d`, `inpaint3d`, `outpaint3d`: the Models Genesis 3D set, with its 3D
  parameters (windows up to 6 x 6 x 3 voxels, 10 000 of them in a 64 x 64 x 32 cube; boxes of
  a sixth to a third of each side; 3-voxel margins), scaled to the patch.

`compose` and `structure_weights`, exported by `napari_tower.proxy`, dispatch on ``x.ndim``:
4-D batches go to the 2D functions unchanged, 5-D ones to these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F

from ..config import PROXY_TASKS
from ..errors import TowerError
from .draws import _chance, _check_p, _noise_like, _rand
from .masking import _masked_cells, check_mask_options
from .painting import INPAINT_P, INPAINT_SHARE, OUTPAINT_P, PAINT_P, _fill_noise, box_axis, boxes_alive
from .remap import NONLINEAR_P, nonlinear_remap
from .shuffle import SHUFFLE_P, _piece_slots, _random_partition
from .structure import _float32
from .structure import structure_weights as structure_weights2d
from .tasks import check_tasks
from .tasks import compose as compose2d

# Models Genesis 3D: 10 000 shuffled windows in a 64 x 64 x 32 cube, sides up to rows // 10 and deps // 10.
REFERENCE_VOXELS = 64 * 64 * 32
SHUFFLE_WINDOWS = 10_000
SHUFFLE_SIDE = 6
SHUFFLE_SIDE_Z = 3


def _check_volumes(x: torch.Tensor, name: str = "x") -> tuple[int, int, int, int, int]:
    if not isinstance(x, torch.Tensor):
        raise TowerError(f"{name} must be a torch tensor of shape (N, C, Z, Y, X), got {type(x).__name__}")
    if x.ndim != 5:
        raise TowerError(f"{name} must have shape (N, C, Z, Y, X), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TowerError(f"{name} must be a floating-point tensor in [0, 1], got dtype {x.dtype}")
    n, c, d, h, w = x.shape
    return n, c, d, h, w


def _cell_z(cell: int, cell_z: int | None) -> int:
    cz = cell if cell_z is None else cell_z
    if not isinstance(cz, int) or cz < 1 or cell < 1:
        raise TowerError(f"cell={cell}, cell_z={cell_z} is invalid: use positive cell sizes in voxels")
    return cz


# ----------------------------------------------------------------------------------------------
# structure prior, remap, block masking


@_float32
def structure_weights3d(x: torch.Tensor, cell: int = 8, per_cell: bool = False,
                        cell_z: int | None = None) -> torch.Tensor:
    """(N, 1, Z, Y, X) structure score in [0, 1]: variance over `cell_z` x `cell` x `cell` cells, / sample max.

    With `per_cell` the scores stay on the (N, 1, gz, gy, gx) cell grid that `block_mask3d` takes.
    """
    n, c, d, h, w = _check_volumes(x)
    cz = _cell_z(cell, cell_z)
    kernel = (cz, cell, cell)
    xf = x.float()
    mean = F.avg_pool3d(xf, kernel, stride=kernel, ceil_mode=True)
    sq = F.avg_pool3d(xf * xf, kernel, stride=kernel, ceil_mode=True)
    var = sq - mean * mean
    var = torch.where(var > 1e-6 * sq, var, torch.zeros_like(var)).mean(dim=1, keepdim=True)
    peak = var.flatten(1).amax(dim=1)[:, None, None, None, None]
    score = torch.where(peak > 0, var / peak.clamp_min(1e-30), torch.zeros_like(var))
    if not per_cell:
        score = score.repeat_interleave(cz, 2).repeat_interleave(cell, 3).repeat_interleave(cell, 4)
        score = score[:, :, :d, :h, :w]
    return score.to(x.dtype).contiguous()


@_float32
def nonlinear_remap3d(x: torch.Tensor, gen: torch.Generator, p: float = NONLINEAR_P, *,
                      invert_p: float = 0.5, n_times: int = 1000, lut_size: int = 1025) -> torch.Tensor:
    """Models Genesis's non-linear intensity transform, one random Bezier curve per sample (see `nonlinear_remap`)."""
    n, c, d, h, w = _check_volumes(x)
    out = nonlinear_remap(x.reshape(n, c, d * h, w), gen, p, invert_p=invert_p, n_times=n_times,
                              lut_size=lut_size)
    return out.reshape(x.shape) if out.data_ptr() != x.data_ptr() else x.clone()


@_float32
def block_mask3d(x: torch.Tensor, gen: torch.Generator, cell: int = 8, ratio: float = 0.25, fill: str = "zero",
                 weights: torch.Tensor | None = None, floor: float = 0.25, cell_z: int | None = None) -> torch.Tensor:
    """3D block masking: `cell_z` x `cell` x `cell` cells (cell_z defaults to cell), `ratio` of them set to 0 or noise.

    Exactly round(ratio * cells) cells per sample (all channels). With `weights` ((N, 1, Z, Y, X)
    or per cell, e.g. `structure_weights3d(x, per_cell=True)`) cells are drawn without replacement
    with probability ``floor / cells + (1 - floor) * w_cell / sum(w)``, as in 2D.
    """
    n, c, d, h, w = _check_volumes(x)
    cz = _cell_z(cell, cell_z)
    check_mask_options(ratio, fill, floor)
    grid = (math.ceil(d / cz), math.ceil(h / cell), math.ceil(w / cell))
    ncell = grid[0] * grid[1] * grid[2]
    cell_w = None
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or weights.ndim != 5 or weights.shape[0] != n \
                or weights.shape[1] != 1 or tuple(weights.shape[2:]) not in ((d, h, w), grid):
            got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
            raise TowerError(f"weights must have shape ({n}, 1, {d}, {h}, {w}) like the batch "
                             f"or ({n}, 1, {grid[0]}, {grid[1]}, {grid[2]}) like its cells, got {got}")
        wt = weights.to(device=x.device, dtype=torch.float32).clamp_min(0.0)
        if tuple(weights.shape[2:]) != grid or grid == (d, h, w):
            wt = F.avg_pool3d(wt, (cz, cell, cell), stride=(cz, cell, cell), ceil_mode=True)
        cell_w = wt.reshape(n, ncell)
    masked = _masked_cells(gen, n, ncell, round(ratio * ncell), x.device, cell_w, float(floor))
    cells = torch.zeros(n, ncell, dtype=torch.bool, device=x.device).scatter_(1, masked, True)
    gd, gh, gw = grid
    mask = cells.view(n, 1, gd, 1, gh, 1, gw, 1).expand(n, 1, gd, cz, gh, cell, gw, cell)
    mask = mask.reshape(n, 1, gd * cz, gh * cell, gw * cell)[:, :, :d, :h, :w]
    if fill == "zero":
        return x.masked_fill(mask, 0.0)
    return torch.where(mask, _noise_like(x, gen), x)


# ----------------------------------------------------------------------------------------------
# local voxel shuffling


def _window_grid(gen: torch.Generator, m: int, shape: tuple[int, int, int], sides: tuple[int, int, int],
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One random grid of disjoint windows per sample: (M, Z*Y*X) window id of every voxel, (M, K) which ids exist.

    Each axis is cut into consecutive pieces of random length 1..side with a random phase
    (as in 2D); a window is one piece per axis.
    """
    pieces, counts = [], []
    for length, side in zip(shape, sides):
        slots = _piece_slots(length, side)
        _, clipped, piece = _random_partition(gen, m, length, side, slots, device)
        pieces.append(piece)
        counts.append((slots, clipped > 0))
    (kd, vd), (kh, vh), (kw, vw) = counts
    pz, py, px = pieces
    wid = (pz[:, :, None, None] * kh + py[:, None, :, None]) * kw + px[:, None, None, :]
    valid = vd[:, :, None, None] & vh[:, None, :, None] & vw[:, None, None, :]
    return wid.reshape(m, -1), valid.reshape(m, kd * kh * kw)


def _permute_windows(values: torch.Tensor, wid: torch.Tensor, chosen: torch.Tensor,
                     gen: torch.Generator) -> torch.Tensor:
    """(M, C, S) `values` with the voxels of every chosen window ((M, K) bool) randomly permuted, all channels alike.

    Sorting voxels by (window id, random key) lists each window's voxels in random order;
    sorting by window id alone (stable) lists them in place order: pairing the two moves voxels
    only within their window. Voxels of windows left alone get key 0, so they stay.
    """
    m, c, s = values.shape
    u = _rand(gen, (m, s), values.device, torch.float64)
    u = torch.where(chosen.gather(1, wid), u, torch.zeros_like(u))
    order = torch.sort(wid.double() + u, dim=1, stable=True).indices
    place = torch.sort(wid, dim=1, stable=True).indices
    source = torch.empty_like(order).scatter_(1, place, order)  # voxel place[j] takes the value at order[j]
    return values.gather(2, source[:, None, :].expand(m, c, s))


@_float32
def local_shuffle3d(x: torch.Tensor, gen: torch.Generator, p: float = SHUFFLE_P,
                    n_windows: int = SHUFFLE_WINDOWS, max_side: int = SHUFFLE_SIDE,
                    max_side_z: int = SHUFFLE_SIDE_Z) -> torch.Tensor:
    """Local voxel shuffling: about `n_windows` (for 64 x 64 x 32 voxels; scaled by volume) windows of
    1..`max_side_z` x 1..`max_side` x 1..`max_side` voxels shuffled in place, per sample with probability `p`.

    Applied in rounds of disjoint windows (a random grid per round, a random subset so each
    sample gets exactly its count); later rounds shuffle earlier results, as Genesis's
    sequential overlapping windows do. Every window keeps its multiset of values, in all channels.
    """
    n, c, d, h, w = _check_volumes(x)
    _check_p(p)
    if max_side < 1 or max_side_z < 1 or n_windows < 0:
        raise TowerError(f"max_side={max_side}, max_side_z={max_side_z}, n_windows={n_windows} are invalid: "
                         "use window sides >= 1 and a window count >= 0")
    apply = _chance(gen, n, p, x.device)
    n_eff = 0 if n_windows == 0 else max(1, round(n_windows * d * h * w / REFERENCE_VOXELS))
    sides = (max(1, min(max_side_z, d)), max(1, min(max_side, h)), max(1, min(max_side, w)))
    chosen = torch.nonzero(apply).flatten()
    m = int(chosen.numel())
    if m == 0 or n_eff == 0 or sides == (1, 1, 1):
        return x.clone()
    values = x.index_select(0, chosen).reshape(m, c, d * h * w)
    left = torch.full((m,), n_eff, dtype=torch.long, device=x.device)
    while bool((left > 0).any()):
        wid, valid = _window_grid(gen, m, (d, h, w), sides, x.device)
        need = torch.minimum(left, valid.sum(dim=1))
        keys = torch.where(valid, _rand(gen, valid.shape, x.device), torch.full(valid.shape, 2.0, device=x.device))
        kth = keys.sort(dim=1).values.gather(1, (need - 1).clamp_min(0)[:, None])
        pick = valid & (keys <= kth) & (need > 0)[:, None]
        values = _permute_windows(values, wid, pick, gen)
        left = left - need
    out = x.clone()
    out.index_copy_(0, chosen, values.reshape(m, c, d, h, w))
    return out


# ----------------------------------------------------------------------------------------------
# in-painting and out-painting


def _paint_mask3d(gen: torch.Generator, inner: torch.Tensor, outer: torch.Tensor,
                  shape: tuple[int, int, int]) -> torch.Tensor:
    """(N, 1, Z, Y, X) bool: the voxels to fill with noise, in-painting `inner` and out-painting `outer` samples.

    As Models Genesis 3D: in-painting adds up to 5 boxes of a sixth to a third of each side (each
    while a 0.95 coin holds); out-painting fills all but 1..5 kept boxes of side minus 3/7..4/7 of
    it. 3-voxel margins (less where the axis is short). The union of a sample's boxes is an
    einsum of per-box indicators along z, y and x.
    """
    dev = inner.device
    n, k = inner.shape[0], 5
    u = _rand(gen, (n, k, 7), dev)
    alive = boxes_alive(inner, outer, u[..., 6])
    along = [box_axis(size, outer, u[..., 2 * i], u[..., 2 * i + 1]).float() for i, size in enumerate(shape)]
    along[0] = along[0] * alive[:, None, :].float()
    covered = torch.einsum("nzk,nyk,nxk->nzyx", *along) > 0.5
    return ((covered ^ outer[:, None, None, None]) & (inner | outer)[:, None, None, None])[:, None]


@_float32
def inpaint3d(x: torch.Tensor, gen: torch.Generator, p: float = INPAINT_P) -> torch.Tensor:
    """3D in-painting: up to 5 boxes of a sixth to a third of each side filled with uniform noise (probability `p`)."""
    n, c, d, h, w = _check_volumes(x)
    _check_p(p)
    chosen = _chance(gen, n, p, x.device)
    return _fill_noise(x, _paint_mask3d(gen, chosen, torch.zeros_like(chosen), (d, h, w)), gen)


@_float32
def outpaint3d(x: torch.Tensor, gen: torch.Generator, p: float = OUTPAINT_P) -> torch.Tensor:
    """3D out-painting: uniform noise everywhere except 1..5 kept boxes (probability `p`)."""
    n, c, d, h, w = _check_volumes(x)
    _check_p(p)
    chosen = _chance(gen, n, p, x.device)
    return _fill_noise(x, _paint_mask3d(gen, torch.zeros_like(chosen), chosen, (d, h, w)), gen)


# ----------------------------------------------------------------------------------------------
# composition and dispatch


@_float32
def compose3d(x: torch.Tensor, tasks: Iterable[str] | str, gen: torch.Generator,
              weights: torch.Tensor | None = None, *, force: bool = False,
              options: Mapping[str, Mapping[str, object]] | None = None) -> torch.Tensor:
    """The named proxy tasks on a (N, C, Z, Y, X) batch, in `compose`'s order and with its probabilities.

    `weights` ((N, 1, Z, Y, X) or per cell) steers block masking; ``options["masking"]`` may set
    `cell_z` besides the 2D options.
    """
    n, c, d, h, w = _check_volumes(x)
    names = set(check_tasks(tasks))
    opts = {k: dict(v) for k, v in (options or {}).items()}
    unknown = set(opts) - set(PROXY_TASKS)
    if unknown:
        raise TowerError(f"options for unknown proxy task(s) {sorted(unknown)}: choose from {', '.join(PROXY_TASKS)}")
    out = x
    if "nonlinear" in names:
        out = nonlinear_remap3d(out, gen, **{"p": 1.0 if force else NONLINEAR_P, **opts.get("nonlinear", {})})
    if "shuffle" in names:
        out = local_shuffle3d(out, gen, **{"p": 1.0 if force else SHUFFLE_P, **opts.get("shuffle", {})})
    if "masking" in names:
        out = block_mask3d(out, gen, weights=weights, **opts.get("masking", {}))
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
        out = _fill_noise(out, _paint_mask3d(gen, inner, outer, (d, h, w)), gen)
    return out.clamp(0.0, 1.0)


def compose(x: torch.Tensor, tasks: Iterable[str] | str, gen: torch.Generator,
            weights: torch.Tensor | None = None, *, force: bool = False,
            options: Mapping[str, Mapping[str, object]] | None = None) -> torch.Tensor:
    """`tasks.compose` for (N, C, Y, X) batches, `compose3d` for (N, C, Z, Y, X) volumes."""
    if isinstance(x, torch.Tensor) and x.ndim == 5:
        return compose3d(x, tasks, gen, weights, force=force, options=options)
    return compose2d(x, tasks, gen, weights, force=force, options=options)


def structure_weights(x: torch.Tensor, cell: int = 8, per_cell: bool = False,
                      cell_z: int | None = None) -> torch.Tensor:
    """`tasks.structure_weights` for (N, C, Y, X) batches (`cell_z` unused), `structure_weights3d` for volumes."""
    if isinstance(x, torch.Tensor) and x.ndim == 5:
        return structure_weights3d(x, cell, per_cell, cell_z)
    return structure_weights2d(x, cell, per_cell)
