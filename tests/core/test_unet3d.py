"""The U-Net in 3D: anisotropic pooling, shapes, and unchanged 2D state dicts (issue 17)."""

from __future__ import annotations

import pytest
import torch

from napari_tower.models import UNet, pool_schedule
from napari_tower.segment.model import Segmenter, fold_batchnorm


def test_pool_schedule_pools_z_only_once_voxels_are_near_isotropic():
    # z step 5x the pixel: y and x are pooled twice (spacing 1 -> 4) before z (5 <= 2 * 4) joins in.
    assert pool_schedule((5.0, 1.0, 1.0), 4) == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert pool_schedule(None, 3) == [(2, 2, 2)] * 3
    # A patch only 8 slices deep stops pooling z where fewer than 2 slices would be left.
    assert pool_schedule((1, 1, 1), 4, min_size=(8, 64, 64)) == [(2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]
    with pytest.raises(ValueError, match="positive"):
        pool_schedule((0, 1, 1), 2)


def test_anisotropic_3d_unet_keeps_shape_and_needs_per_axis_multiples():
    pools = pool_schedule((4.0, 1.0, 1.0), 3)
    net = UNet(1, base=4, depth=3, spatial_dims=3, pools=pools)
    assert pools == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert net.multiples == (4, 8, 8)
    x = torch.randn(2, 1, 8, 32, 40)
    feats, bottleneck = net(x)
    assert feats.shape == (2, 4, 8, 32, 40)
    assert bottleneck.shape == (2, 32, 2, 4, 5)


def test_2d_state_dict_names_are_unchanged_by_the_3d_option():
    names = set(UNet(1, 8, 2).state_dict())
    assert "encoder.levels.0.0.weight" in names and "decoder.ups.0.weight" in names
    assert names == set(UNet(1, 8, 2, spatial_dims=3).state_dict())


def test_3d_segmenter_folds_batchnorm_to_the_same_output():
    torch.manual_seed(0)
    model = Segmenter(1, 3, base=4, depth=2, spatial_dims=3, pools=[(1, 2, 2), (2, 2, 2)])
    x = torch.randn(1, 1, 4, 16, 16)
    model.train()
    model(x)  # populate running statistics so folding is not a no-op
    model.eval()
    with torch.no_grad():
        before = model(x)
        after = fold_batchnorm(model)(x)
    assert before.shape == (1, 3, 4, 16, 16)
    assert torch.allclose(before, after, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())


def test_kernels_span_z_only_where_z_is_comparable():
    from napari_tower.models import conv_kernels

    pools = pool_schedule((12.5, 1.0, 1.0), 4)
    # Sections 12.5 px apart: in-plane kernels until pixels have grown to 8 (12.5 <= 2 x 8), where z joins in.
    assert conv_kernels((12.5, 1.0, 1.0), pools) == [(1, 3, 3)] * 3 + [(3, 3, 3)] * 2
    assert conv_kernels(None, pool_schedule(None, 2)) == [(3, 3, 3)] * 3
    net = UNet(1, base=4, depth=4, spatial_dims=3, pools=pools, kernels=conv_kernels((12.5, 1, 1), pools))
    first = net.encoder.levels[0][0]
    assert tuple(first.weight.shape[2:]) == (1, 3, 3) and tuple(first.padding) == (0, 1, 1)
    assert net(torch.randn(1, 1, 4, 32, 32))[0].shape == (1, 4, 4, 32, 32)
    # A 1-voxel z kernel cannot mix sections at full resolution: a change in one slice stays in it there.
    net.eval()  # batch statistics would couple every voxel
    with torch.no_grad():
        a = torch.zeros(1, 1, 4, 32, 32)
        b = a.clone()
        b[0, 0, 0] = 1.0
        da = net.encoder.levels[0](b) - net.encoder.levels[0](a)
    assert da[0, :, 1:].abs().max() == 0 and da[0, :, 0].abs().max() > 0
    with pytest.raises(ValueError, match="odd"):
        UNet(1, 4, 1, spatial_dims=3, kernels=[(2, 3, 3), (3, 3, 3)])


def test_3d_bundles_rebuild_with_their_kernels():
    from napari_tower.config import FinetuneConfig, to_dict
    from napari_tower.model_bundle import ModelBundle
    from napari_tower.segment.model import segmenter_from_checkpoint

    cfg = FinetuneConfig()
    cfg.model.dims, cfg.model.voxel_size, cfg.model.base, cfg.model.depth = "3d", (10.0, 1.0, 1.0), 4, 3
    cfg.data.patch_z = 4
    model = Segmenter(1, 2, 4, 3, 3, cfg.model.pools(4), cfg.model.kernels(4))
    bundle = ModelBundle(kind="segmenter", config=to_dict(cfg), state=model.state_dict(), target="binary", classes=2)
    assert bundle.kernels == cfg.model.kernels(4) and bundle.kernels[0] == (1, 3, 3)
    rebuilt = segmenter_from_checkpoint(bundle)
    x = torch.randn(1, 1, 4, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x))
