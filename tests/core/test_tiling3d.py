"""3D tiled prediction (issue 17): tiles split z, y and x, blended to the untiled result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_tower.errors import TowerError
from napari_tower.segment.tiling3d import predict_tiled_3d, tiling_3d


def conv_net_3d(in_ch=2, out_ch=3, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(in_ch, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv3d(4, out_ch, 3, padding=1), torch.nn.Sigmoid(),
    )  # receptive-field radius 2 along every axis
    return net.eval()


def untiled(net, volume):
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(volume.transpose(1, 0, 2, 3)[None], dtype=np.float32))
        return net(x)[0].numpy().transpose(1, 0, 2, 3)  # (Z, K, Y, X)


class ReadGuard:
    """Array-like that records every read and refuses to be loaded whole."""

    def __init__(self, array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.reads = []

    def __getitem__(self, key):
        part = self.array[key]
        self.reads.append(part.shape)
        return part

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole volume was loaded")


def test_identity_tiles_split_every_axis_and_blend_exactly():
    volume = np.random.default_rng(0).random((37, 2, 45, 51)).astype(np.float32)  # (Z, C, Y, X), odd sides
    calls = []

    def identity(x):
        calls.append(tuple(x.shape))
        assert x.shape[2] % 4 == 0 and x.shape[3] % 8 == 0 and x.shape[4] % 8 == 0
        return x.clone()

    out = predict_tiled_3d(volume, identity, 2, tile=(16, 24, 24), overlap=(4, 8, 8), multiples=(4, 8, 8), batch=3)
    np.testing.assert_allclose(out, volume, rtol=1e-5, atol=1e-6)
    assert sum(c[0] for c in calls) == 3 * 3 * 3  # 3 tiles along each axis


def test_conv_net_tiled_equals_untiled_across_z_y_and_x_seams():
    net = conv_net_3d()
    volume = np.random.default_rng(1).random((40, 2, 48, 56)).astype(np.float32)
    expected = untiled(net, volume)
    guard = ReadGuard(volume)
    ticks = []
    out = predict_tiled_3d(guard, net, 3, tile=(16, 24, 24), overlap=(8, 8, 8), multiples=(1, 1, 1), batch=2,
                           progress=lambda d, t: ticks.append((d, t)))
    assert out.shape == (40, 3, 48, 56)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert max(int(np.prod(r)) for r in guard.reads) <= 16 * 2 * 24 * 24  # only (balanced) tiles are read
    assert ticks[-1] == (36, 36)  # 4 tiles along z, 3 along y, 3 along x
    # Too little overlap along z alone: a seam appears there.
    thin = predict_tiled_3d(volume, net, 3, tile=(16, 24, 24), overlap=(2, 8, 8), multiples=1)
    assert np.abs(thin - expected).max() > 1e-3


def test_single_channel_volume_thinner_than_a_tile_is_padded_and_cropped():
    volume = np.random.default_rng(2).random((3, 20, 30)).astype(np.float32)  # (Z, Y, X): 3 slices only
    out = predict_tiled_3d(volume, lambda x: x * 2, 1, tile=(16, 32, 32), overlap=(4, 8, 8), multiples=(4, 16, 16))
    assert out.shape == (3, 1, 20, 30)
    np.testing.assert_allclose(out[:, 0], volume * 2, rtol=1e-6)


def test_preallocated_output_is_overwritten_not_added_to():
    volume = np.ones((8, 1, 16, 16), np.float32)
    out = np.full((8, 1, 16, 16), 7.0, np.float32)
    predict_tiled_3d(volume, lambda x: x, 1, tile=8, overlap=2, multiples=1, out=out)
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_tiling_3d_defaults_follow_the_network_multiples():
    tile, overlap = tiling_3d(1024, 64, (16, 16, 16))
    assert tile == (32, 256, 256) and overlap == (16, 64, 64)
    tile, overlap = tiling_3d(100, 64, (2, 8, 8))  # anisotropic: z pooled less, so a thinner z overlap
    assert tile == (32, 96, 96) and overlap == (12, 48, 48)


def test_errors():
    volume = np.zeros((8, 1, 16, 16), np.float32)
    with pytest.raises(TowerError, match="needs"):
        predict_tiled_3d(np.zeros((4, 4)), lambda x: x, 1)
    with pytest.raises(TowerError, match="overlap 9 along z"):
        predict_tiled_3d(volume, lambda x: x, 1, tile=16, overlap=(9, 2, 2), multiples=1)
    with pytest.raises(TowerError, match="out_channels=2"):
        predict_tiled_3d(volume, lambda x: x, 2, tile=8, overlap=2, multiples=1)
    with pytest.raises(TowerError, match="output array has shape"):
        predict_tiled_3d(volume, lambda x: x, 1, tile=8, overlap=2, multiples=1, out=np.zeros((8, 16, 16)))
