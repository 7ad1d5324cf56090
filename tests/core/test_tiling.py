"""Tiled prediction: equality with untiled runs, out-of-core inputs and outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_tower.errors import TowerError
from napari_tower.segment.tiling import _ramp, _window, balanced_tile, predict_tiled, tile_starts


def assert_blended_equal(actual, expected) -> None:
    """Blending accumulates in float32: equal up to a few ulps of the values, which are O(1)."""
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def identity(x):
    assert x.dtype == torch.float32
    assert x.shape[-1] % 16 == 0 and x.shape[-2] % 16 == 0
    return x.clone()


class ReadGuard:
    """Array-like that records every read and refuses to be loaded whole."""

    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.reads = []

    def __getitem__(self, key):
        part = self.array[key]
        self.reads.append(part.shape)
        return part

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole image was loaded")


def conv_net(in_ch=2, out_ch=3, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(in_ch, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, out_ch, 3, padding=1), torch.nn.Sigmoid(),
    )  # receptive-field radius 3 (7 x 7)
    return net.eval()


# ----------------------------------------------------------------------------- window


def test_ramps_of_neighbours_sum_to_one():
    for overlap in (1, 4, 15, 64):
        ramp = _ramp(overlap)
        np.testing.assert_allclose(ramp + ramp[::-1], 1.0, atol=1e-12)
        assert np.all(ramp[:overlap // 4] == 0)
    w = _window(0, 32, 32, 8)  # a single tile: image border on both sides, never down-weighted
    assert np.all(w == 1)
    assert tile_starts(100, 32, 8) == [0, 24, 48, 68]
    assert tile_starts(20, 32, 8) == [0]


def test_balanced_tile_spreads_the_slack_without_adding_tiles():
    for length, tile, overlap in [(4096, 1024, 64), (4096, 512, 64), (1000, 512, 64), (513, 512, 64), (300, 128, 32)]:
        side = balanced_tile(length, tile, overlap)
        assert side % 16 == 0 and side <= tile
        assert len(tile_starts(length, side, overlap)) == len(tile_starts(length, tile, overlap))
        assert len(tile_starts(length, side - 16, overlap)) > len(tile_starts(length, tile, overlap))
    assert balanced_tile(4096, 1024, 64) == 880  # 5 tiles of 880 instead of 4 of 1024 plus one overlapping 832 px
    assert balanced_tile(100, 512, 64) == 100


# ----------------------------------------------------------------------------- identity


def test_identity_exact_on_odd_image():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 300, 517)).astype(np.float32)
    calls = []
    result = predict_tiled(image, identity, 2, tile=128, overlap=32, batch=3,
                           progress=lambda done, total: calls.append((done, total)))
    assert result.dtype == np.float32 and result.shape == image.shape
    assert_blended_equal(result, image)
    ys, xs = tile_starts(300, 128, 32), tile_starts(517, 128, 32)
    assert calls[-1] == (len(ys) * len(xs),) * 2


def test_image_smaller_than_tile_is_padded_and_cropped():
    rng = np.random.default_rng(1)
    image = rng.random((1, 37, 50)).astype(np.float32)
    shapes = []

    def fn(x):
        shapes.append(tuple(x.shape))
        return x * 2

    result = predict_tiled(image, fn, 1, tile=512, overlap=64)
    assert shapes == [(1, 1, 48, 64)]
    assert_blended_equal(result, image * 2)
    # 2D input is taken as one channel; mixed: smaller than the tile in one axis only
    image2 = rng.random((20, 200)).astype(np.float32)
    assert_blended_equal(predict_tiled(image2, identity, 1, tile=64, overlap=16)[0], image2)


def test_zarr_in_zarr_out():
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(2)
    data = rng.random((3, 150, 211)).astype(np.float32)
    src = zarr.zeros(shape=data.shape, chunks=(3, 64, 64), dtype="float32")
    src[:] = data
    dst = zarr.zeros(shape=(3, 150, 211), chunks=(1, 64, 64), dtype="float32")
    returned = predict_tiled(src, identity, 3, tile=64, overlap=16, batch=2, out=dst)
    assert returned is dst
    assert_blended_equal(dst[:], data)


def test_dask_input():
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(3)
    data = rng.random((1, 90, 130)).astype(np.float32)
    result = predict_tiled(da.from_array(data, chunks=(1, 32, 32)), identity, 1, tile=48, overlap=16)
    assert_blended_equal(result, data)


def test_reads_only_row_strips():
    rng = np.random.default_rng(4)
    data = rng.random((2, 400, 300)).astype(np.float32)
    guard = ReadGuard(data)
    result = predict_tiled(guard, identity, 2, tile=64, overlap=16)
    assert_blended_equal(result, data)
    assert guard.reads and all(shape[1] <= 64 for shape in guard.reads)
    assert sum(shape[1] for shape in guard.reads) < 2 * 400  # each row read about once


# ----------------------------------------------------------------------------- conv net


def test_conv_net_tiled_equals_untiled():
    net = conv_net()
    rng = np.random.default_rng(5)
    image = rng.normal(size=(2, 150, 230)).astype(np.float32)
    with torch.no_grad():
        full = net(torch.from_numpy(image)[None])[0].numpy()
    # overlap 16 >= 2 x the 7-pixel receptive field: tile-edge outputs get zero weight
    tiled = predict_tiled(image, net, 3, tile=64, overlap=16, batch=4)
    assert np.abs(tiled - full).max() < 1e-4


def test_conv_net_with_padded_tiles_matches_in_interior():
    net = conv_net(in_ch=1, out_ch=2, seed=1)
    rng = np.random.default_rng(6)
    image = rng.normal(size=(1, 40, 200)).astype(np.float32)  # 40 rows < tile: padded to 48
    with torch.no_grad():
        full = net(torch.from_numpy(image)[None])[0].numpy()
    tiled = predict_tiled(image, net, 2, tile=64, overlap=16)
    # the reflection padding below row 40 differs from the untiled zero padding only within the radius
    assert np.abs(tiled[:, :-3] - full[:, :-3]).max() < 1e-4


def test_without_enough_overlap_seams_appear():
    net = conv_net(seed=2)
    rng = np.random.default_rng(7)
    image = rng.normal(size=(2, 96, 96)).astype(np.float32)
    with torch.no_grad():
        full = net(torch.from_numpy(image)[None])[0].numpy()
    tiled = predict_tiled(image, net, 3, tile=48, overlap=0)
    assert np.abs(tiled - full).max() > 1e-3  # sanity: the equality above is not trivial


# ----------------------------------------------------------------------------- errors


def test_errors():
    image = np.zeros((1, 40, 40), np.float32)
    with pytest.raises(TowerError, match="overlap"):
        predict_tiled(image, identity, 1, tile=32, overlap=20)
    with pytest.raises(TowerError, match="tile"):
        predict_tiled(image, identity, 1, tile=8, overlap=0)
    with pytest.raises(TowerError, match="output array has shape"):
        predict_tiled(image, identity, 1, tile=32, overlap=8, out=np.zeros((2, 40, 40), np.float32))
    with pytest.raises(TowerError, match="out_channels=2"):
        predict_tiled(image, identity, 2, tile=32, overlap=8)
    with pytest.raises(TowerError, match="shape"):
        predict_tiled(np.zeros((1, 1, 4, 4)), identity, 1)


# ----------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(
    channels=st.integers(1, 3),
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    tile=st.integers(16, 64),
    overlap_frac=st.floats(0, 1),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_identity_tiling_property(channels, height, width, tile, overlap_frac, batch, seed):
    overlap = int(overlap_frac * (tile // 2))
    image = np.random.default_rng(seed).normal(size=(channels, height, width)).astype(np.float32)
    result = predict_tiled(image, identity, channels, tile=tile, overlap=overlap, batch=batch)
    assert_blended_equal(result, image)
