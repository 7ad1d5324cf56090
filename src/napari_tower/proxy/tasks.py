"""Proxy-task corruptions T(x) of spec section 2, composed: `compose` applies a named set in a fixed order.

The tasks live one to a module (`remap`, `masking`, `shuffle`, `painting`; the seeded draws they share in
`draws`). Every task takes a float batch ``x`` of shape (N, C, H, W) with values in [0, 1] and a
``torch.Generator``; all randomness comes from that generator, so a seed reproduces the output exactly (on one
device and torch version). Each returns a new tensor of the same shape, dtype and device and never modifies
``x``. Nothing loops over samples in Python: the only loops are over small constant counts (the five
in-painting blocks, the three or four shuffling rounds), each batched over N.

Parameters are the spec's for a 128 x 128 patch (Models Genesis's 2D reading); block sizes scale with the patch
side and the shuffling window count with the patch area.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable, Mapping

import torch

from ..config import PROXY_TASKS
from ..errors import TowerError
from .draws import _chance, _rand
from .masking import _along_rows, _draw_mask, block_mask
from .painting import INPAINT_P, INPAINT_SHARE, OUTPAINT_P, PAINT_P, _fill_noise, _paint_mask, inpaint, outpaint
from .remap import NONLINEAR_P, _draw_curves, _lookup, _lut_grid, nonlinear_remap
from .shuffle import REFERENCE_SIDE, SHUFFLE_P, local_shuffle
from .structure import _check_batch, _float32, structure_weights

TOWER_TASKS = ("nonlinear", "masking")
GENESIS_TASKS = ("nonlinear", "shuffle", "inpaint", "outpaint")
ORDER = ("nonlinear", "shuffle", "masking", "inpaint", "outpaint")


# ----------------------------------------------------------------------------------------------
# one pass for remap + masking


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


__all__ = [
    "GENESIS_TASKS", "INPAINT_P", "INPAINT_SHARE", "NONLINEAR_P", "ORDER", "OUTPAINT_P", "PAINT_P", "REFERENCE_SIDE",
    "SHUFFLE_P", "TOWER_TASKS", "block_mask", "check_tasks", "compose", "inpaint", "local_shuffle", "nonlinear_remap",
    "outpaint", "structure_weights",
]
