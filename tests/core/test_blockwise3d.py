"""Block-wise prediction of volumes with a 3D model (issue 17): z, y and x seams, ids across seams, resume."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_tower.config import PredictConfig
from napari_tower.data import read_image
from napari_tower.errors import TowerError
from napari_tower.segment import Predictor
from napari_tower.segment.block_runners import PredictionStopped
from napari_tower.segment.blockwise import predict_blockwise
from napari_tower.segment.blockwise3d import volume_grid
from napari_tower.segment.metrics import dice, object_scores

from .volumes import balls, tiny_segmenter_3d

SEAM_BALL = (16, 48, 48)  # centred on the z seam between the first two block layers (cores of 16 slices)
BLOCKS = {"block": (16, 64, 64), "halo": (8, 16, 16), "chunk": 32}


@pytest.fixture(scope="module")
def bundle():
    return tiny_segmenter_3d()


@pytest.fixture(scope="module")
def volume_zarr(tmp_path_factory):
    image, truth = balls(seed=3, centres=[SEAM_BALL])
    path = tmp_path_factory.mktemp("volume") / "volume.zarr"
    z = zarr.open_array(str(path), mode="w", shape=image.shape, chunks=(16, 32, 32), dtype=image.dtype)
    z[:] = image
    return path, truth


def _cfg(**kw) -> PredictConfig:
    return PredictConfig(device="cpu", tile=64, overlap=32, **kw)


def test_volume_grid_covers_each_voxel_once_with_a_halo_on_every_axis():
    blocks = volume_grid((40, 100, 90), core=(16, 32, 32), halo=(4, 8, 8), min_extent=(8, 48, 48), volumes=2)
    cover = np.zeros((2, 40, 100, 90), int)
    for b in blocks:
        z0, z1, y0, y1, x0, x1 = b.core
        cover[b.volume, z0:z1, y0:y1, x0:x1] += 1
        ez0, ez1, ey0, ey1, ex0, ex1 = b.ext
        assert ez0 <= max(0, z0 - 4) and ez1 >= min(40, z1 + 4) and ey0 <= max(0, y0 - 8) and ex1 >= min(90, x1 + 8)
        assert ez1 - ez0 >= 8 and ey1 - ey0 >= 48 and ex1 - ex0 >= 48
    assert (cover == 1).all() and len(blocks) == 2 * 3 * 4 * 3


def test_blockwise_volume_matches_the_in_memory_prediction_and_keeps_ids_across_z(tmp_path, bundle, volume_zarr):
    path, truth = volume_zarr
    image = read_image(path)
    predictor = Predictor(bundle, _cfg(instances=True))
    whole = predictor.predict(image)
    result = predict_blockwise(predictor, image, tmp_path / "out.zarr", probabilities=True, workers=2, **BLOCKS)
    labels = zarr.open_array(str(tmp_path / "out.zarr" / "labels"), mode="r")
    assert labels.shape == (48, 96, 96) and labels.chunks == (16, 32, 32)
    assert result.blocks == 3 * 2 * 2  # z, y and x are all split
    got = labels[:]
    probs = zarr.open_array(str(tmp_path / "out.zarr" / "probabilities"), mode="r")[:]
    assert np.abs(probs - whole.probabilities).max() < 0.1
    assert dice(got > 0, whole.labels > 0) > 0.999
    assert np.unique(got).tolist() == list(range(got.max() + 1)) and result.objects == [got.max()]
    assert object_scores(got, whole.labels)["f1"] == 1.0  # every 3D object is one object block-wise too
    seam_ball = truth == truth[SEAM_BALL]
    ids, counts = np.unique(got[seam_ball], return_counts=True)
    assert ids[counts.argmax()] > 0 and counts.max() > 0.95 * counts.sum()
    assert (got[seam_ball][:, None] == ids[ids > 0][None]).any(1).sum() == (got[seam_ball] > 0).sum()
    assert len(ids[ids > 0]) == 1, f"the ball across the z seam got ids {ids}"
    assert (seam_ball[15].any() and seam_ball[16].any())  # it does cross the seam


def test_stopped_volume_prediction_resumes_to_the_same_result(tmp_path, bundle, volume_zarr):
    path, _ = volume_zarr
    image = read_image(path)
    predictor = Predictor(bundle, _cfg(instances=True))
    reference = tmp_path / "reference.zarr"
    predict_blockwise(predictor, image, reference, **BLOCKS)
    out = tmp_path / "out.zarr"
    ticks = []
    with pytest.raises(PredictionStopped):
        predict_blockwise(predictor, image, out, progress=lambda d, t: ticks.append(d),
                          should_stop=lambda: len(ticks) >= 4, **BLOCKS)
    assert not out.exists() and (tmp_path / ".out.zarr.partial").is_dir()
    result = predict_blockwise(predictor, image, out, **BLOCKS)
    assert 4 <= result.resumed < result.blocks
    np.testing.assert_array_equal(zarr.open_array(str(out / "labels"), mode="r")[:],
                                  zarr.open_array(str(reference / "labels"), mode="r")[:])


def test_several_volumes_and_class_labels(tmp_path, bundle):
    a, b = balls((16, 64, 64), 5, seed=7)[0], balls((16, 64, 64), 5, seed=8)[0]
    path = tmp_path / "tzyx.zarr"
    z = zarr.open_array(str(path), mode="w", shape=(2, 16, 64, 64), chunks=(1, 8, 32, 32), dtype=a.dtype)
    z[:] = np.stack([a, b])
    image = read_image(path, axes="TZYX")
    assert image.n_volumes == 2
    predictor = Predictor(bundle, _cfg())
    result = predict_blockwise(predictor, image, tmp_path / "out.zarr", block=(8, 64, 64), halo=(4, 16, 16), chunk=32)
    labels = zarr.open_array(str(tmp_path / "out.zarr" / "labels"), mode="r")
    assert labels.shape == (32, 64, 64) and labels.dtype == np.uint8 and result.blocks == 2 * 2
    assert dice(labels[:] > 0, predictor.predict(image).labels > 0) > 0.999


def test_bad_volume_settings_are_refused(tmp_path, bundle, volume_zarr):
    image = read_image(volume_zarr[0])
    with pytest.raises(TowerError, match="cannot join objects"):
        predict_blockwise(Predictor(bundle, _cfg(instances=True)), image, tmp_path / "o.zarr", block=(16, 64, 64),
                          halo=(0, 16, 16))
    with pytest.raises(TowerError, match="give one value or three"):
        predict_blockwise(Predictor(bundle, _cfg()), image, tmp_path / "o.zarr", block=(16, 64))
    assert not (tmp_path / "o.zarr").exists()


def test_a_z_range_of_a_lazy_volume_is_one_read():
    """A block of slices reads the stored volume once (a 3D-chunked zarr decodes each chunk once, not per slice)."""
    from napari_tower.data.lazy import AxesView

    from .test_scale import CountingArray

    data = np.arange(2 * 6 * 10 * 12, dtype=np.uint16).reshape(2, 6, 10, 12)  # T, Z, Y, X
    base = CountingArray(data)
    view = AxesView(base, "TZYX")
    np.testing.assert_array_equal(view[7:11, :, 2:5, 3:9], data.reshape(12, 1, 10, 12)[7:11, :, 2:5, 3:9])
    assert base.reads == [4 * 3 * 6]
    base.reads = []
    np.testing.assert_array_equal(view[4:8, 0], data.reshape(12, 10, 12)[4:8])  # crosses a time point: per slice
    assert len(base.reads) == 4
