"""Predictor with a 3D model (issue 17): volumes in, 3D tiling, labels as planes, instances kept across z."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tower.config import PredictConfig
from napari_tower.data import from_array
from napari_tower.errors import TowerError
from napari_tower.segment import Predictor
from napari_tower.segment.instances import instances_from_probabilities
from napari_tower.segment.metrics import dice
from napari_tower.segment.tiling3d import predict_tiled_3d

from .volumes import balls, tiny_segmenter_3d


@pytest.fixture(scope="module")
def bundle():
    return tiny_segmenter_3d()


def test_3d_model_predicts_volumes_as_planes_with_ids_kept_across_z(bundle):
    image_data, truth = balls(seed=3)
    image = from_array(image_data, "volume", axes="ZYX")
    assert image.z_size == 48 and bundle.spatial_dims == 3
    ticks = []
    pred = Predictor(bundle, PredictConfig(device="cpu", tile=64, overlap=32, instances=True)).predict(
        image, progress=lambda d, t: ticks.append((d, t)))
    assert pred.probabilities.shape == (48, 2, 96, 96) and pred.labels.shape == (48, 96, 96)
    assert ticks == [(1, 1)]  # one volume
    assert dice(pred.labels > 0, truth > 0) > 0.95
    # Every true ball is one predicted object through all its slices (a 2D model would give one id per slice).
    assert pred.labels.max() == truth.max()
    for k in range(1, truth.max() + 1):
        ids, counts = np.unique(pred.labels[truth == k], return_counts=True)
        assert ids[counts.argmax()] > 0 and counts.max() > 0.9 * counts.sum()
        assert np.unique(np.nonzero(truth == k)[0]).size > 1  # the ball spans several slices


def test_3d_tiles_blend_to_the_whole_volume_prediction(bundle):
    image_data = balls(seed=4)[0]
    predictor = Predictor(bundle, PredictConfig(device="cpu", tile=48, overlap=24))
    tiled = predictor.predict(from_array(image_data, "volume", axes="ZYX"))
    # One tile for the whole volume against tiles that split z, y and x (a 3D U-Net's receptive field is wider
    # than a quarter of the overlap, so they agree closely rather than exactly).
    norm = predictor.normalisation_for(from_array(image_data, "volume", axes="ZYX"))
    volume = norm.apply(image_data[:, None], channel_axis=1)
    whole = predict_tiled_3d(volume, predictor.forward, 2, tile=(48, 96, 96), overlap=0, multiples=4)
    assert np.abs(whole - tiled.probabilities).max() < 0.2
    assert dice(whole.argmax(1) > 0, tiled.labels > 0) > 0.99


def test_listed_planes_of_several_volumes(bundle):
    a, b = balls((16, 48, 48), 4, seed=5)[0], balls((16, 48, 48), 4, seed=6)[0]
    image = from_array(np.stack([a, b]), "tzyx", axes="TZYX")
    assert image.z_size == 16 and image.n_volumes == 2
    predictor = Predictor(bundle, PredictConfig(device="cpu", tile=48, overlap=16))
    full = predictor.predict(image)
    assert full.labels.shape == (32, 48, 48)
    np.testing.assert_allclose(full.probabilities[16:], predictor.predict(from_array(b, "b", axes="ZYX")).probabilities,
                               atol=1e-5)
    some = predictor.predict(image, planes=[20, 3, 21])
    np.testing.assert_allclose(some.probabilities, full.probabilities[[20, 3, 21]], atol=1e-5)
    np.testing.assert_array_equal(some.labels, full.labels[[20, 3, 21]])


def test_instances_from_probabilities_in_3d():
    fg = np.zeros((10, 20, 20), np.float32)
    fg[1:9, 2:8, 2:8] = 1.0  # one box through 8 slices
    fg[1:9, 2:8, 12:18] = 1.0  # another
    boundary = np.zeros_like(fg)
    labels = instances_from_probabilities(fg, boundary, min_size=10)
    assert labels.max() == 2 and np.unique(labels[1:9, 2:8, 2:8]).tolist() == [labels[1, 2, 2]]


def test_shape_heads_are_refused_for_3d_models(bundle):
    from dataclasses import replace

    with pytest.raises(TowerError, match="predict planes only"):
        Predictor(replace(bundle, target="instance", classes=3, instance_head="stardist"), PredictConfig(device="cpu"))
