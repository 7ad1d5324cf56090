"""Property-based tests over shapes, dtypes and seeds for normalisation, the proxy tasks and tiling.

(The metrics' properties live in test_metrics.py, identity tiling in test_tiling.py,
the proxy tasks on float batches in test_proxy.py.)
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_tower.config import PROXY_TASKS
from napari_tower.data import compute_normalisation
from napari_tower.errors import TowerError
from napari_tower.proxy import compose
from napari_tower.segment.tiling import predict_tiled

DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.float16, np.float32, np.float64]


def raw_image(shape: tuple[int, ...], dtype: type, seed: int, spread: float) -> np.ndarray:
    """Random microscopy-like data of any dtype: integers over part of their range, floats at any scale."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        span = max(1, int((int(info.max) - int(info.min)) * min(spread, 1.0)))
        low = int(info.min) + int(rng.integers(0, int(info.max) - int(info.min) - span + 1))
        return rng.integers(low, low + span, size=shape, endpoint=True).astype(dtype)
    spread = min(spread, float(np.finfo(dtype).max) / 100)  # finite: NaN/Inf images are refused elsewhere
    return (rng.normal(size=shape) * spread).astype(dtype)


images = st.tuples(
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 40), st.integers(1, 40)),
    st.sampled_from(DTYPES),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1e-6, 1e-3, 0.5, 1.0, 1e3, 1e30]),
)


@settings(max_examples=60, deadline=None)
@given(images)
def test_normalisation_is_finite_in_unit_range_or_refuses_constant_channels(params):
    shape, dtype, seed, spread = params
    data = raw_image(shape, dtype, seed, spread)
    try:
        norm = compute_normalisation(data, "image")
    except TowerError as exc:
        assert "constant" in str(exc)
        assert any(np.ptp(data[:, c].astype(np.float64)) == 0 for c in range(shape[1]))
        return
    out = norm.apply(data)
    assert out.shape == data.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images, st.lists(st.sampled_from(PROXY_TASKS), unique=True), st.booleans())
def test_any_image_through_normalisation_and_corruptions_stays_finite_in_range(params, tasks, force):
    (planes, channels, h, w), dtype, seed, spread = params
    data = raw_image((planes, channels, h + 16, w + 16), dtype, seed, spread)  # corruptions need 16 px
    try:
        norm = compute_normalisation(data, "image")
    except TowerError:
        return  # constant: refused above, nothing to corrupt
    x = torch.from_numpy(norm.apply(data))
    out = compose(x, tasks, torch.Generator().manual_seed(seed % 2**31), force=force)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


def _conv_net(in_ch: int, out_ch: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_ch, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(6, out_ch, 3, padding=1),
    ).eval()  # receptive-field radius 3


@settings(max_examples=30, deadline=None)
@given(
    channels=st.integers(1, 3), out_channels=st.integers(1, 3),
    height=st.integers(8, 120), width=st.integers(8, 120),
    tile=st.sampled_from([32, 48, 64]), overlap_extra=st.integers(0, 20), batch=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_tiled_equals_untiled_for_a_conv_net(channels, out_channels, height, width, tile, overlap_extra, batch, seed):
    """With overlap >= 4 x the receptive-field radius, tiling changes nothing but the reflect-padded border."""
    overlap = min(tile // 2, 12 + overlap_extra)
    net = _conv_net(channels, out_channels, seed)
    image = np.random.default_rng(seed).normal(size=(channels, height, width)).astype(np.float32)
    with torch.no_grad():
        full = net(torch.from_numpy(image)[None])[0].numpy()
    tiled = predict_tiled(image, net, out_channels, tile=tile, overlap=overlap, batch=batch)
    assert tiled.shape == full.shape and np.isfinite(tiled).all()
    # Tiles smaller than a multiple of 16 are reflect-padded at the bottom/right, where the untiled
    # net sees zero padding: only the last radius (3 px) of rows/columns may differ.
    np.testing.assert_allclose(tiled[:, :-3, :-3], full[:, :-3, :-3], atol=1e-4)
