"""Voxel size from real TIFF / OME-TIFF / OME-Zarr files and layer scales, and the 2D/3D "auto" rule (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_tower.data import read_image
from napari_tower.data.voxels import (
    MIN_VOLUME_SLICES,
    VoxelSize,
    choose_dims,
    dims_of_image,
    parse_voxel_size,
    resolve_dims,
    stack_axes,
    voxel_size_from_scale,
    voxel_size_of_file,
)
from napari_tower.errors import TowerError

STACK = np.zeros((24, 32, 40), np.uint16)


def test_imagej_spacing_and_resolution(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, STACK, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    voxel = voxel_size_of_file(path)
    assert voxel is not None and voxel.source == "ImageJ metadata"
    assert voxel.zyx == pytest.approx((2.0, 0.5, 0.25))
    image = read_image(path)
    assert image.voxels == voxel and image.z_size == 24
    choice = dims_of_image(image)
    assert choice.dims == "3d" and "24 slices" in choice.reason and "ImageJ" in choice.reason


def test_ome_tiff_physical_sizes_with_units(tmp_path):
    path = tmp_path / "ome.ome.tif"
    tifffile.imwrite(path, STACK, ome=True, metadata={"axes": "ZYX", "PhysicalSizeZ": 500, "PhysicalSizeZUnit": "nm",
                                                      "PhysicalSizeY": 0.1, "PhysicalSizeX": 0.1})
    voxel = voxel_size_of_file(path)
    assert voxel is not None and voxel.source == "OME-XML"
    assert voxel.zyx == pytest.approx((0.5, 0.1, 0.1))  # nm converted, so the ratio z/x is 5


def test_pyramid_level_of_an_ome_tiff_has_larger_pixels(tmp_path):
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(STACK, subifds=1, metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5,
                                             "PhysicalSizeX": 0.5})
        tw.write(STACK[:, ::2, ::2], subfiletype=1)
    assert voxel_size_of_file(path).zyx == pytest.approx((2.0, 0.5, 0.5))
    assert voxel_size_of_file(path, level=1).zyx == pytest.approx((2.0, 1.0, 1.0))
    assert read_image(path, level=1).voxels.zyx == pytest.approx((2.0, 1.0, 1.0))


def test_tiff_without_z_spacing_declares_nothing(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", STACK)
    tifffile.imwrite(tmp_path / "xy_only.tif", STACK, imagej=True, resolution=(2.0, 2.0))
    assert voxel_size_of_file(tmp_path / "plain.tif") is None
    assert voxel_size_of_file(tmp_path / "xy_only.tif") is None
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    assert voxel_size_of_file(tmp_path / "broken.tif") is None  # metadata is optional: never an error of its own
    assert read_image(tmp_path / "plain.tif").voxels is None


def test_ome_zarr_scale_transformations(tmp_path):
    zarr = pytest.importorskip("zarr")
    path = tmp_path / "vol.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=(2, 24, 32, 40), dtype="uint16", chunks=(1, 8, 32, 40))
    group.create_array("1", shape=(2, 24, 16, 20), dtype="uint16", chunks=(1, 8, 16, 20))
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "t", "type": "time"}, {"name": "z", "type": "space", "unit": "micrometer"},
                 {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 3.0, 0.5, 0.5]}]},
                     {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 3.0, 1.0, 1.0]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [60, 2, 2, 2]}],
    }]
    voxel = voxel_size_of_file(path)
    assert voxel is not None and voxel.source == "OME-Zarr metadata"
    assert voxel.zyx == pytest.approx((6.0, 1.0, 1.0))
    assert voxel_size_of_file(path, level=1).zyx == pytest.approx((6.0, 2.0, 2.0))
    image = read_image(path)
    assert image.axes == "TZYX" and image.z_size == 24 and image.n_volumes == 2
    choice = dims_of_image(image)
    assert choice.dims == "3d" and "2 volumes" in choice.reason


@pytest.mark.parametrize("axes,shape,dims,words", [
    ("YX", (64, 64), "2d", "single plane"),
    ("YXS", (64, 64, 3), "2d", "RGB"),
    ("TYX", (50, 64, 64), "2d", "time series of 50 frames"),
    ("ZYX", (MIN_VOLUME_SLICES - 1, 64, 64), "2d", f"only {MIN_VOLUME_SLICES - 1} slices"),
    ("ZYX", (MIN_VOLUME_SLICES, 64, 64), "3d", f"{MIN_VOLUME_SLICES} slices along Z"),
    ("TZYX", (3, 20, 64, 64), "3d", "in each of 3 volumes"),
    ("ZTYX", (20, 3, 64, 64), "2d", "innermost"),
    ("ZCYX", (20, 2, 64, 64), "3d", "20 slices"),
])
def test_auto_rule(axes, shape, dims, words):
    choice = choose_dims(axes, shape)
    assert choice.dims == dims and words in choice.reason, choice


def test_guessed_axes_say_so():
    assert "guessed" in choose_dims("ZYX", (24, 8, 8), guessed=True).reason
    assert "guessed" not in choose_dims("ZYX", (24, 8, 8)).reason


def test_layer_axes_from_labels_and_scale():
    assert stack_axes(3) == ("ZYX", True)
    assert stack_axes(4) == ("TZYX", True)
    assert stack_axes(4, rgb=True) == ("ZYXC", True)
    assert stack_axes(2) == ("YX", True)
    assert stack_axes(3, axis_labels=("-3", "-2", "-1")) == ("ZYX", True)  # napari's unnamed defaults
    assert stack_axes(3, axis_labels=("t", "y", "x")) == ("TYX", False)
    assert stack_axes(4, axis_labels=("time", "z", "y", "x")) == ("TZYX", False)
    assert stack_axes(4, axis_labels=("-4", "t", "y", "x")) == ("ATYX", False)
    voxel = voxel_size_from_scale((4, 1, 1), "ZYX")
    assert voxel == VoxelSize((4.0, 1.0, 1.0), "the layer's scale")
    assert voxel_size_from_scale((2, 4, 1, 1), "TZYX").zyx == (4.0, 1.0, 1.0)
    assert voxel_size_from_scale((1, 1), "YX") is None and voxel_size_from_scale((1, 1, 1), "TYX") is None
    assert voxel_size_from_scale((0.5, 100, 100), "ZYX", units=("um", "nm", "nm")).zyx == pytest.approx((0.5, 0.1, 0.1))


def test_parse_voxel_size_and_explicit_dims(tmp_path):
    assert parse_voxel_size("4 1 1") == parse_voxel_size("4,1,1") == parse_voxel_size(["4", "1", "1"]) == (4, 1, 1)
    assert parse_voxel_size(["4,", "0.5,0.5"]) == (4, 0.5, 0.5)
    for bad in ("4 1", "a b c", "4 0 1", "1 2 3 4"):
        with pytest.raises(ValueError):
            parse_voxel_size(bad)
    tifffile.imwrite(tmp_path / "plane.tif", np.zeros((32, 32), np.uint8))
    plane = read_image(tmp_path / "plane.tif")
    assert resolve_dims("2d", plane).dims == "2d" and resolve_dims("auto", plane).dims == "2d"
    with pytest.raises(TowerError, match="no volume"):
        resolve_dims("3d", plane)
