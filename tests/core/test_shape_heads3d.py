"""The capped distance head on volumes (issue 20, item 4 "3D"): painted-slice targets, 3D decoding and tuning,
training, block-wise seams and the retrain loop, on small synthetic volumes (seconds on two CPU cores)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig, RetrainConfig
from napari_tower.data import from_array, read_image
from napari_tower.errors import TowerError
from napari_tower.segment import Predictor, finetune, retrain
from napari_tower.segment.blockwise import predict_blockwise
from napari_tower.segment.instance_heads import head_for
from napari_tower.segment.metrics import dice, object_scores, object_scores_3d, split_share
from napari_tower.segment.retrain3d import predict_volumes
from napari_tower.segment.shape_heads import CAP_PX, edge_distance, volume_edge_distance
from napari_tower.segment.shape_training import tune_postprocess

from .volumes import balls


def packed_balls(shape=(24, 48, 48), spacing=12, radius=7.5) -> np.ndarray:
    """Balls on a lattice, closer than their diameter: every ball touches its neighbours in z, y and x, and each
    voxel of the union belongs to its nearest centre (convex, touching objects)."""
    grid = np.stack(np.indices(shape), -1).astype(float)
    centres = np.stack(np.meshgrid(*[np.arange(spacing / 2, s, spacing) for s in shape], indexing="ij"), -1)
    centres = centres.reshape(-1, 3)
    dist = np.linalg.norm(grid[..., None, :] - centres, axis=-1)
    labels = (dist.argmin(-1) + 1).astype(np.int32)
    labels[dist.min(-1) > radius] = 0
    return labels


def perfect_outputs(targets: np.ndarray) -> np.ndarray:
    """What a perfectly trained head outputs for targets (foreground, distance, ...): [p_bg, p_fg, distance]."""
    return np.concatenate([1.0 - targets[:1], targets])


def three_d(steps=60, head="capped", **kw) -> FinetuneConfig:
    return FinetuneConfig(steps=steps, batch=2, lr=3e-3, seed=0, val_every=0, checkpoint_every=0, target="instance",
                          instance_head=head, device="cpu", data=DataConfig(patch=32, patch_z=8),
                          model=ModelConfig(base=4, depth=2, dims="3d"), **kw)


@pytest.fixture(scope="module")
def painted_model():
    """A capped 3D model fine-tuned from the instance ids of two painted slices of a volume of balls."""
    image, truth = balls((24, 64, 64), n=10, radius=(4, 7), seed=1)
    labels = np.zeros_like(truth)
    labels[[8, 16]] = truth[[8, 16]]
    return image, truth, finetune([from_array(image, "balls", axes="ZYX")], [labels], three_d()).checkpoint


def test_decode_of_encode_recovers_balls_touching_in_z_y_and_x():
    truth = packed_balls()
    head = head_for("capped")
    painted = np.ones(truth.shape[0], bool)  # dense labels: every slice painted
    outputs = perfect_outputs(head.encode_volume(truth, painted))
    params = tune_postprocess(head, [outputs], [truth], painted=[painted])
    decoded = head.decode(outputs, params)
    assert params["f1"] == 1.0 and object_scores_3d(decoded, truth)["f1"] == 1.0
    assert decoded.max() == truth.max() == 32 and split_share(decoded, truth) == 0.0


def test_painted_slice_distances_are_in_plane_unless_the_neighbour_was_painted():
    truth = packed_balls()
    z_contact = 13  # balls centred at z 6 and 18 meet between slices 12 and 13
    head = head_for("capped")
    # A lone painted slice: its objects continue into the unpainted neighbours, so its distances are in-plane.
    lone = np.isin(np.arange(24), [5])
    dist = volume_edge_distance(truth, lone, CAP_PX)
    np.testing.assert_allclose(dist[5], edge_distance(truth[5], CAP_PX), atol=1e-6)
    assert not dist[~lone].any()  # unpainted slices carry nothing
    # Two neighbouring painted slices at the contact: the face between two stacked balls is an edge in z.
    pair = np.isin(np.arange(24), [z_contact - 1, z_contact])
    stacked = volume_edge_distance(truth, pair, CAP_PX)
    centre = (z_contact, 6, 6)
    assert truth[centre] != truth[z_contact - 1, 6, 6]  # two balls meet there
    assert stacked[centre] == pytest.approx(1 / CAP_PX)
    assert edge_distance(truth[z_contact], CAP_PX)[6, 6] > 0.9  # in-plane it is deep inside
    # Anisotropic voxels (z 3x the in-plane pixel): the slice beyond the face is 3 px away.
    coarse = volume_edge_distance(truth, pair, CAP_PX, sampling=(3.0, 1.0, 1.0))
    assert coarse[centre] == pytest.approx(3 / CAP_PX)
    targets = head.encode_volume(truth, pair)
    assert targets.shape == (2, *truth.shape) and np.array_equal(targets[0], (truth > 0).astype(np.float32))
    with pytest.raises(TowerError, match="planes only"):
        head_for("stardist").encode_volume(truth, pair)


def test_the_capped_head_trains_volumes_from_two_painted_slices(painted_model):
    image, truth, bundle = painted_model
    assert bundle.spatial_dims == 3 and bundle.instance_head == "capped" and bundle.classes == 3
    assert {"seed_threshold", "min_size", "f1"} <= set(bundle.postprocess)  # tuned on the painted slices
    predictor = Predictor(bundle, PredictConfig(device="cpu", instances=True, tile=64, overlap=16))
    out = predictor.predict(from_array(image, axes="ZYX"))
    assert out.probabilities.shape == (24, 3, 64, 64)
    np.testing.assert_allclose(out.probabilities[:, :2].sum(1), 1.0, atol=1e-4)
    labels = out.labels
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    assert dice(labels > 0, truth > 0) > 0.8
    assert object_scores_3d(labels, truth)["f1"] > 0.6  # whole 3D objects, one id each through z
    assert split_share(labels, truth) == 0.0
    # The retrain loop's in-memory path activates the head as the Predictor does.
    whole = predict_volumes(predictor, from_array(image, axes="ZYX"))
    np.testing.assert_allclose(whole.probabilities, out.probabilities, atol=1e-4)


def test_capped_3d_instances_keep_one_id_across_block_seams(tmp_path, painted_model):
    _, _, bundle = painted_model
    image, _ = balls((48, 96, 96), n=20, seed=3, centres=[(16, 48, 48)])
    path = tmp_path / "volume.zarr"
    z = zarr.open_array(str(path), mode="w", shape=image.shape, chunks=(16, 32, 32), dtype=image.dtype)
    z[:] = image
    stack = read_image(path)
    predictor = Predictor(bundle, PredictConfig(device="cpu", tile=64, overlap=32, instances=True))
    whole = predictor.predict(stack).labels
    result = predict_blockwise(predictor, stack, tmp_path / "out.zarr", block=(16, 64, 64), halo=(8, 16, 16),
                               chunk=32, workers=2)
    got = zarr.open_array(str(tmp_path / "out.zarr" / "labels"), mode="r")[:]
    assert result.blocks == 3 * 2 * 2 and whole.max() > 10
    assert object_scores(got, whole)["f1"] == 1.0  # every 3D object is one object block-wise too
    seam = whole == whole[16, 48, 48]
    assert whole[16, 48, 48] > 0 and seam[15].any() and len(np.unique(got[seam])) == 1


def test_a_3d_capped_model_retrains_from_a_corrected_slice(painted_model):
    image, truth, bundle = painted_model
    stack = from_array(image, "balls", axes="ZYX")
    previous = predict_volumes(Predictor(bundle, PredictConfig(device="cpu", instances=True)), stack).labels
    corrected = previous.copy()
    corrected[12] = truth[12]  # the user fixes one slice's objects
    assert (corrected != previous).any()
    result = retrain(bundle, stack, previous, corrected, RetrainConfig(steps=10, seed=0, device="cpu"),
                     predict_cfg=PredictConfig(device="cpu", instances=True))
    assert result.model.spatial_dims == 3 and result.model.instance_head == "capped"
    assert result.model.postprocess and "seed_threshold" in result.model.postprocess  # tuned again
    after = result.labels(previous)
    assert after.shape == truth.shape and after.max() > 3
    assert dice(after > 0, truth > 0) > 0.6 and split_share(after, truth) == 0.0


def test_heads_that_train_planes_only_are_refused_for_volumes():
    image, truth = balls((16, 32, 32), n=3, seed=2)
    with pytest.raises(TowerError, match=r"stardist instance head is 2D only.*capped"):
        finetune([from_array(image, axes="ZYX")], [truth], three_d(steps=1, head="stardist"))
