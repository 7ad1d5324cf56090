"""Local pixel shuffling (Models Genesis): pixels permuted within small random windows, batched over samples."""

from __future__ import annotations

import functools
import math

import torch

from ..errors import TowerError
from .draws import _chance, _check_p, _rand, _randint
from .structure import _check_batch, _float32

REFERENCE_SIDE = 128  # the spec's window count is for 128 x 128 patches
SHUFFLE_P = 0.5  # Models Genesis's probability


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
