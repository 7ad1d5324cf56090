"""Test-time augmentation: a prediction averaged over flips and quarter turns of its input.

Training augments every patch with quarter turns and flips (`data.patch_augment`), so the network should answer
the same for a turned image; where it does not, averaging its answers over the turns removes part of its error,
as Cellpose's `augment` and nnU-Net's mirroring do. Each transform is undone on the output before averaging, so
this holds for maps whose values do not depend on direction (class probabilities, foreground, distances to an
edge); StarDist's rays do, and heads like it say so with `InstanceHead.symmetric`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TRANSFORMS = (1, 4, 8)  # identity only; the four flips of both axes; the eight flips and quarter turns


def dihedral(count: int) -> list[tuple[int, bool]]:
    """`count` transforms as (quarter turns, flip of x): 1 is the identity, 4 the flips of y, x and both
    (two half turns with and without a flip), 8 every flip and quarter turn of a square."""
    if count not in TRANSFORMS:
        raise ValueError(f"test-time transforms must be one of {TRANSFORMS}, not {count}")
    turns = {1: (0,), 4: (0, 2), 8: (0, 1, 2, 3)}[count]
    flips = (False,) if count == 1 else (False, True)
    return [(k, flip) for k in turns for flip in flips]


def transform(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """`x` (N, C, ..., Y, X) flipped in x, then turned `turns` quarter turns in (y, x)."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def undo(y: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """The inverse of `transform(., turns, flip)`."""
    if turns:
        y = torch.rot90(y, -turns, dims=(-2, -1))
    return y.flip(-1) if flip else y


def averaged(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, count: int) -> torch.Tensor:
    """The mean of `fn` over `count` transforms of `x` (see `dihedral`), each output brought back to `x`'s frame.

    Non-square tiles turn into tiles of swapped sides, which a U-Net takes as long as both are multiples of its
    downsampling; tiled prediction already pads them so."""
    total: torch.Tensor | None = None
    for turns, flip in dihedral(count):
        y = undo(fn(transform(x, turns, flip)), turns, flip)
        total = y if total is None else total.add_(y)  # fn's outputs are new tensors: summing in place is safe
    assert total is not None  # dihedral() is never empty
    return (total.div_(count) if count > 1 else total).contiguous()


__all__ = ["TRANSFORMS", "averaged", "dihedral", "transform", "undo"]
