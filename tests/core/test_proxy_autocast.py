"""Corruptions run in float32 even inside a bf16 autocast region (the training step's), where matrix products
would round their table indices out of range."""

from __future__ import annotations

import torch

from napari_tower.proxy import compose, local_shuffle, structure_weights


def test_compose_inside_bf16_autocast_matches_float32():
    x = torch.rand(8, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    weights = structure_weights(x, per_cell=True, cell=8)
    plain = compose(x, ("nonlinear", "masking"), torch.Generator().manual_seed(1), weights=weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = compose(x, ("nonlinear", "masking"), torch.Generator().manual_seed(1), weights=weights)
        shuffled = local_shuffle(x, torch.Generator().manual_seed(2))
    assert inside.dtype == torch.float32 and shuffled.dtype == torch.float32
    assert torch.equal(plain, inside)
