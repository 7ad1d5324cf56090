"""Reading, normalising and sampling images."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_tower.data import (
    PatchSampler,
    Source,
    compute_normalisation,
    expand_inputs,
    from_array,
    read_image,
    read_labels,
)
from napari_tower.errors import TowerError


@pytest.mark.parametrize(
    "shape,dtype,expected",
    [
        ((64, 80), np.uint8, (1, 1, 64, 80)),
        ((5, 64, 80), np.uint16, (5, 1, 64, 80)),
        ((64, 80, 3), np.uint8, (1, 3, 64, 80)),
        ((4, 64, 80, 3), np.uint8, (4, 3, 64, 80)),
        ((64, 80), np.float32, (1, 1, 64, 80)),
    ],
)
def test_tiff_shapes_become_planes_channels_y_x(tmp_path, shape, dtype, expected):
    data = (np.random.default_rng(0).random(shape) * 200).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="rgb" if shape[-1] == 3 else "minisblack")
    image = read_image(tmp_path / "a.tif")
    assert image.shape == expected
    # Pixel values are preserved through the reorder.
    if len(shape) == 2:
        np.testing.assert_array_equal(np.asarray(image.data)[0, 0], data)
    elif shape[-1] == 3:
        np.testing.assert_array_equal(np.asarray(image.data)[-1, 1], data[..., 1] if len(shape) == 3 else data[-1, ..., 1])
    else:
        np.testing.assert_array_equal(np.asarray(image.data)[-1, 0], data[-1])


def test_imagej_hyperstack_channels(tmp_path):
    data = np.arange(3 * 2 * 32 * 40, dtype=np.uint16).reshape(3, 2, 32, 40)
    tifffile.imwrite(tmp_path / "h.tif", data, imagej=True, metadata={"axes": "ZCYX"})
    image = read_image(tmp_path / "h.tif")
    assert image.shape == (3, 2, 32, 40)
    np.testing.assert_array_equal(np.asarray(image.data)[2, 1], data[2, 1])


def test_png_npy_zarr(tmp_path):
    import imageio.v3 as iio
    import zarr

    data = (np.random.default_rng(1).random((48, 64)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "a.png", data)
    np.save(tmp_path / "a.npy", data)
    z = zarr.open(str(tmp_path / "a.zarr"), mode="w", shape=data.shape, dtype=data.dtype, chunks=(16, 16))
    z[:] = data
    for name in ("a.png", "a.npy", "a.zarr"):
        image = read_image(tmp_path / name)
        np.testing.assert_array_equal(np.asarray(image.data)[0, 0], data)
    assert [p.name for p in expand_inputs([str(tmp_path / "*.np*")])] == ["a.npy"]


@pytest.mark.parametrize(
    "array,message",
    [
        (np.zeros((0, 5)), "empty"),
        (np.zeros(10), "cannot be read as an image"),
        (np.zeros((2, 2, 2, 2, 2, 2)), "cannot be read as an image"),
    ],
)
def test_bad_arrays_are_refused_with_a_reason(array, message):
    with pytest.raises(TowerError, match=message):
        from_array(array)


def test_normalisation_refuses_nan_and_constant():
    with pytest.raises(TowerError, match="NaN"):
        compute_normalisation(np.full((1, 1, 8, 8), np.nan), "x")
    with pytest.raises(TowerError, match="constant"):
        compute_normalisation(np.ones((1, 1, 8, 8)), "x")
    norm = compute_normalisation(np.arange(1000, dtype=np.float32).reshape(1, 1, 10, 100), "x", 1, 99)
    out = norm.apply(np.arange(1000, dtype=np.float32).reshape(1, 10, 100))
    assert out.min() == 0 and out.max() == 1 and abs(float(np.median(out)) - 0.5) < 0.01


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(TowerError, match="does not exist"):
        read_image(tmp_path / "nope.tif")
    tifffile.imwrite(tmp_path / "t.tif", np.ones((64, 64), np.uint16))
    raw = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(TowerError):
        np.asarray(read_image(tmp_path / "t.tif").data)


def test_labels_read_as_planes(tmp_path):
    tifffile.imwrite(tmp_path / "l.tif", np.zeros((3, 20, 20), np.uint16))
    assert read_labels(tmp_path / "l.tif").shape == (3, 20, 20)


def _sampler(image, prior):
    im = from_array(image)
    return PatchSampler([Source(im, compute_normalisation(im.data, "x"))], 32, structure_prior=prior, prior_floor=0.1)


def test_sampler_is_seeded_and_prior_prefers_structure():
    rng = np.random.default_rng(0)
    image = np.zeros((256, 256), np.float32)
    image[:, 192:] = rng.random((256, 64))  # texture only in the right quarter
    a = _sampler(image, True).sample(64, np.random.default_rng(5))["image"]
    b = _sampler(image, True).sample(64, np.random.default_rng(5))["image"]
    np.testing.assert_array_equal(a, b)
    uniform = _sampler(image, False).sample(200, np.random.default_rng(1))["image"]
    prior = _sampler(image, True).sample(200, np.random.default_rng(1))["image"]
    textured = lambda batch: float((batch.std(axis=(1, 2, 3)) > 0.05).mean())
    assert textured(prior) > textured(uniform) + 0.3


def test_sampler_refuses_image_smaller_than_patch():
    with pytest.raises(TowerError, match="smaller than the 32 px patch"):
        _sampler(np.random.default_rng(0).random((20, 100)), False)
