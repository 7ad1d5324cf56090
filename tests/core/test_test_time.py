"""Test-time flips (`PredictConfig.tta`): every transform is undone, and the averaged prediction of a flipped
image is the flipped prediction of the image, which a plain prediction is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig
from napari_tower.data import from_array
from napari_tower.errors import TowerError
from napari_tower.segment import Predictor, finetune
from napari_tower.segment.test_time import averaged, dihedral, transform, undo

from ..conftest import blobs


@pytest.mark.parametrize("shape", [(2, 3, 32, 48), (1, 2, 5, 16, 32)])  # planes and volumes, non-square
def test_every_transform_is_undone(shape):
    x = torch.randn(shape)
    seen = set()
    for turns, flip in dihedral(8):
        moved = transform(x, turns, flip)
        seen.add(moved.flatten().numpy().tobytes())
        assert torch.equal(undo(moved, turns, flip), x)
    assert len(seen) == 8  # eight different views, not one repeated


def test_four_transforms_are_the_flips_of_y_x_and_both():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    views = {transform(x, k, f).flatten().tolist().__repr__() for k, f in dihedral(4)}
    expected = {t.flatten().tolist().__repr__() for t in (x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2))}
    assert views == expected


def test_averaging_a_direction_blind_map_changes_nothing_and_a_directed_one_symmetrises_it():
    x = torch.randn(1, 1, 16, 16)
    assert torch.allclose(averaged(torch.sigmoid, x, 8), torch.sigmoid(x), atol=1e-6)
    ramp = torch.arange(16.0).expand(1, 1, 16, 16)  # a map that grows with x: not flip-symmetric
    flat = averaged(lambda t: ramp.clone(), x, 4)  # averaged over flips of x it is the mean of the ramp
    assert torch.allclose(flat, torch.full_like(flat, 7.5))


@pytest.fixture(scope="module")
def trained():
    image, labels = blobs((64, 96), seed=3)
    cfg = FinetuneConfig(steps=4, batch=2, device="cpu", target="instance", instance_head="capped",
                         data=DataConfig(patch=32), model=ModelConfig(base=4, depth=2))
    return image, finetune([from_array(image)], [labels[None]], cfg).checkpoint


def _probabilities(model, image: np.ndarray, tta: int) -> np.ndarray:
    # One tile (the image is smaller than it), float32: tiling and bfloat16 rounding would break exact symmetry.
    cfg = PredictConfig(device="cpu", precision="float32", tta=tta, tile=128, overlap=0)
    return Predictor(model, cfg).predict(from_array(image)).probabilities[0]


def test_flipped_image_gives_the_flipped_prediction_only_with_test_time_flips(trained):
    image, model = trained
    for tta, symmetric in ((1, False), (8, True)):
        probs = _probabilities(model, image, tta)
        of_flipped = _probabilities(model, np.ascontiguousarray(image[:, ::-1]), tta)
        of_turned = _probabilities(model, np.ascontiguousarray(np.rot90(image)), tta)
        gap = max(np.abs(of_flipped[..., ::-1] - probs).max(), np.abs(np.rot90(of_turned, -1, (1, 2)) - probs).max())
        assert (gap < 1e-4) == symmetric, (tta, gap)


def test_test_time_flips_are_checked_and_skipped_for_stardist_rays(trained):
    with pytest.raises(TowerError, match="unknown test-time flips '3': choose one of 1, 4, 8"):
        PredictConfig(tta=3).validate()
    image, labels = blobs((64, 64), seed=4)
    cfg = FinetuneConfig(steps=2, batch=2, device="cpu", target="instance", instance_head="stardist",
                         data=DataConfig(patch=32), model=ModelConfig(base=4, depth=2))
    rays = finetune([from_array(image)], [labels[None]], cfg).checkpoint
    assert Predictor(rays, PredictConfig(device="cpu", tta=8)).transforms == 1
    assert Predictor(trained[1], PredictConfig(device="cpu", tta=8)).transforms == 8
