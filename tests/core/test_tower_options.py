"""TOWER's corruption strength and view geometry are settable and do what they say."""

from __future__ import annotations

import pytest
import torch

from napari_tower.config import DataConfig, ModelConfig, PretrainConfig
from napari_tower.errors import TowerError
from napari_tower.methods import build_method
from napari_tower.methods.tower import shift_views


def _tower(**kw) -> torch.nn.Module:
    cfg = PretrainConfig(model=ModelConfig(base=4, depth=2), data=DataConfig(structure_prior=False), **kw)
    cfg.validate()
    return build_method(cfg)


@pytest.mark.parametrize(("ratio", "cell"), [(0.25, 8), (0.5, 16), (0.1, 4)])
def test_mask_ratio_and_cell_size_set_the_masking(ratio, cell):
    x = torch.rand(6, 1, 64, 64) * 0.8 + 0.2  # no zero pixels before masking
    corrupted = _tower(mask_ratio=ratio, mask_cell=cell, remap_p=0.0).corrupt(x, torch.Generator().manual_seed(0))
    cells = corrupted.reshape(6, 64 // cell, cell, 64 // cell, cell).amax(dim=(2, 4))
    masked_share = (cells == 0).float().mean(dim=(1, 2))
    assert torch.allclose(masked_share, torch.full((6,), round(ratio * (64 // cell) ** 2) / (64 // cell) ** 2))
    # Without masking, remap_p=0 leaves the image untouched.
    plain = _tower(tasks=("nonlinear",), remap_p=0.0).corrupt(x, torch.Generator().manual_seed(0))
    assert torch.equal(plain, x)


def test_view_shift_translates_each_sample_within_the_bound():
    x = torch.rand(8, 1, 48, 48)
    shifted = shift_views(x, 5, torch.Generator().manual_seed(1))
    for i in range(8):
        found = [(dy, dx) for dy in range(-5, 6) for dx in range(-5, 6)
                 if torch.equal(shifted[i, :, 5:-5, 5:-5], x[i, :, 5 + dy: 43 + dy, 5 + dx: 43 + dx])]
        assert len(found) == 1
    assert not torch.equal(shifted, x)


def test_shifted_views_train_and_bad_options_are_refused():
    method = _tower(view_shift=6)
    losses = method.step(torch.rand(4, 1, 64, 64), torch.Generator().manual_seed(0))
    losses["loss"].backward()
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(TowerError, match=r"mask ratio 0\.95 is invalid"):
        _tower(mask_ratio=0.95)
