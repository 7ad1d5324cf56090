"""3D fine-tuning from sparse slice annotations, 3D instances and z-consistency metrics (issue 17).

Everything runs on small synthetic volumes of bright spheres with a base-4, depth-2 U-Net, so each
test takes seconds on two CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_tower.config import (
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    PredictConfig,
    PretrainConfig,
    RetrainConfig,
    to_dict,
)
from napari_tower.data import from_array
from napari_tower.errors import TowerError
from napari_tower.model_bundle import ModelBundle
from napari_tower.models import UNet
from napari_tower.segment import finetune, retrain
from napari_tower.segment.finetune3d import volume_targets
from napari_tower.segment.instances import instance_to_targets, instances_from_probabilities
from napari_tower.segment.losses import segmentation_loss
from napari_tower.segment.metrics import dice, object_scores_3d, split_share, z_consistency
from napari_tower.segment.model import segmenter_from_checkpoint
from napari_tower.segment.predict import Predictor
from napari_tower.segment.retrain3d import predict_volumes
from napari_tower.segment.targets import encode_targets, encode_volume_targets
from napari_tower.segment.volume_patches import LabelledVolume, VolumePatchSampler

PAINTED = [8, 16]  # the two slices the "user" paints


def spheres(shape=(24, 64, 64), n=6, seed=0):
    """A noisy volume of `n` bright spheres (radius 5-8 voxels) and their instance labels."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i in range(n):
        c = rng.uniform([4, 8, 8], [shape[0] - 4, shape[1] - 8, shape[2] - 8])
        r = rng.uniform(5, 8)
        labels[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r * r] = i + 1
    image = (labels > 0) * 0.7 + 0.15 + rng.normal(0, 0.08, shape)
    return image.astype(np.float32), labels


def painted(labels, slices=PAINTED, binary=True):
    """Labels of only `slices`, the others left 0 (unannotated)."""
    out = np.zeros_like(labels)
    out[slices] = (labels[slices] > 0) if binary else labels[slices]
    return out


def cfg3d(steps=60, target="binary", **kw):
    kw = {"val_every": 0, **kw}
    return FinetuneConfig(steps=steps, batch=2, lr=3e-3, seed=0, checkpoint_every=0, target=target, device="cpu",
                          data=DataConfig(patch=32, patch_z=8), model=ModelConfig(base=4, depth=2, dims="3d"), **kw)


def predict_whole(bundle, image):
    """Labels (Z, Y, X) of a whole volume, straight from the segmenter (tiled 3D prediction is elsewhere)."""
    model = segmenter_from_checkpoint(bundle)
    x = bundle.normalisation.apply(image[:, None], channel_axis=1).transpose(1, 0, 2, 3)[None]
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x))).argmax(1)[0].numpy()


@pytest.fixture(scope="module")
def sparse_model():
    image, labels = spheres()
    return image, labels, finetune([from_array(image, "spheres", axes="ZYX")], [painted(labels)], cfg3d()).checkpoint


def test_sparse_slice_finetuning_segments_the_unpainted_slices(sparse_model):
    image, labels, bundle = sparse_model
    assert bundle.spatial_dims == 3 and bundle.config["model"]["dims"] == "3d"
    assert segmenter_from_checkpoint(bundle).unet.spatial_dims == 3  # the file rebuilds its 3D U-Net
    pred = predict_whole(bundle, image)
    others = [z for z in range(image.shape[0]) if z not in PAINTED]
    fg = labels[others] > 0
    constant = max(dice(np.ones_like(fg), fg), dice(np.zeros_like(fg), fg))  # best constant predictor
    score = dice(pred[others] > 0, fg)
    assert constant < 0.15 and score > 0.7, (score, constant)


def test_only_painted_slices_carry_loss():
    image, labels = spheres()
    targets = volume_targets(painted(labels), 24, "binary")
    assert np.array_equal(np.flatnonzero(targets.reshape(24, -1).any(1)), PAINTED)  # unpainted slices: 0
    sampler = VolumePatchSampler([LabelledVolume(from_array(image, axes="ZYX").volume(0), _norm(), targets)], 32, 8)
    batch = sampler.sample(16, np.random.default_rng(0))
    assert batch["image"].shape == (16, 1, 8, 32, 32) and batch["labels"].shape == (16, 8, 32, 32)
    labelled = (batch["labels"] > 0).reshape(16, 8, -1).any(-1).sum(1)
    assert labelled.min() >= 1 and labelled.max() <= 2  # every patch holds painted voxels, only of painted slices
    # In 3D too, voxels with target 0 get no gradient, whatever the weights say.
    logits = torch.randn(2, 2, 8, 16, 16, requires_grad=True)
    t = torch.from_numpy(batch["labels"][:2, :, :16, :16])
    segmentation_loss(logits, t, torch.ones(t.shape)).backward()
    assert torch.all(logits.grad[(t == 0)[:, None].expand_as(logits)] == 0)
    assert torch.any(logits.grad[(t > 0)[:, None].expand_as(logits)] != 0)


def _norm():
    from napari_tower.data import Normalisation

    return Normalisation([0.0], [1.0])


def two_spheres_touching_in_z():
    """Two balls (radius 6) pressed together along z: slices 0-10 are one, 11-21 the other."""
    zz, yy, xx = np.indices((22, 24, 24))
    labels = np.zeros((22, 24, 24), np.int32)
    labels[((zz - 5.5) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 < 36) & (zz <= 10)] = 1
    labels[((zz - 15.5) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 < 36) & (zz >= 11)] = 2
    return labels


def test_3d_instance_targets_and_watershed_separate_spheres_touching_in_z():
    truth = two_spheres_touching_in_z()
    enc = encode_volume_targets(truth, "instance")
    fg, boundary = (enc >= 2).astype(np.float32), (enc == 3).astype(np.float32)
    found = instances_from_probabilities(fg, boundary, min_size=20)
    assert found.max() == 2 and object_scores_3d(found, truth)["f1"] == 1.0
    assert split_share(found, truth) == 0.0
    # In-plane boundaries alone leave the touching faces as interior: the seeds join and the spheres merge.
    planar = encode_targets(truth, "instance")
    merged = instances_from_probabilities((planar >= 2).astype(np.float32), (planar == 3).astype(np.float32))
    assert merged.max() == 1
    # min_size counts voxels: a 27-voxel cube goes at 28, stays at 27.
    speck = np.zeros((10, 10, 10), np.float32)
    speck[2:5, 2:5, 2:5] = 1
    assert instances_from_probabilities(speck, min_size=28).max() == 0
    assert instances_from_probabilities(speck, min_size=27).max() == 1


def test_instance_boundaries_of_lone_painted_slices_are_in_plane():
    truth = two_spheres_touching_in_z()
    only = painted(truth, [5, 10, 11], binary=False)  # slice 5 alone; 10 and 11 meet at the contact
    _, boundary = instance_to_targets(only, np.isin(np.arange(22), [5, 10, 11]))
    from skimage.segmentation import find_boundaries

    assert np.array_equal(boundary[5], find_boundaries(truth[5], mode="inner"))  # no whole-slice cap
    assert boundary[10].sum() > find_boundaries(truth[10], mode="inner").sum()  # the contact face is edge
    _, dense = instance_to_targets(truth, np.ones(22, bool))
    assert np.array_equal(dense, find_boundaries(truth, mode="inner"))  # dense labels: plain 3D boundaries


def test_object_f1_and_split_share_on_hand_made_volumes():
    truth = np.zeros((6, 10, 10), np.int32)
    truth[1:5, 2:5, 2:5] = 1
    truth[0:6, 6:9, 6:9] = 2
    same = truth * 3  # other ids, same objects
    assert object_scores_3d(same, truth)["f1"] == 1.0
    assert z_consistency(same, truth) == {"split_share": 0.0, "split": 0, "objects": 2}
    switched = same.copy()
    switched[3:, 2:5, 2:5] = 7  # object 1 changes id half-way through z
    assert z_consistency(switched, truth) == {"split_share": 0.5, "split": 1, "objects": 2}
    assert object_scores_3d(switched, truth)["precision"] == pytest.approx(2 / 3)
    missed = same.copy()
    missed[missed == 6] = 0
    missed[2, 6:9, 6:9] = 6  # object 2 found on one slice only: a miss, not a split
    assert z_consistency(missed, truth)["objects"] == 1
    with pytest.raises(TowerError, match="volumes"):
        split_share(truth[0], truth[0])


def test_a_2d_checkpoint_is_refused_for_3d_and_back(tiny_segmenter, sparse_model):
    image, labels, bundle3d = sparse_model
    vol = from_array(image, "spheres", axes="ZYX")
    with pytest.raises(TowerError, match=r"2D \(plane by plane\) model but this fine-tuning is 3D.*--dims"):
        finetune([vol], [painted(labels)], cfg3d(steps=1), init=tiny_segmenter)
    planes_cfg = cfg3d(steps=1)
    planes_cfg.model.dims = "2d"
    with pytest.raises(TowerError, match=r"3D \(volume\) model but this fine-tuning is 2D.*--dims 3d"):
        finetune([vol], [painted(labels)], planes_cfg, init=bundle3d)
    with pytest.raises(TowerError, match="no Z axis"):
        finetune([from_array(image[0], axes="YX")], [labels[:1] > 0], cfg3d(steps=1))


def test_finetune_from_a_3d_pretrained_bundle_loads_its_weights():
    image, labels = spheres()
    pre_cfg = PretrainConfig(data=DataConfig(patch=32, patch_z=8), model=ModelConfig(base=4, depth=2, dims="3d"))
    torch.manual_seed(1)
    unet = UNet(1, 4, 2, 3, pre_cfg.model.pools(8))
    pretrained = ModelBundle(kind="pretrained", config=to_dict(pre_cfg), method="tower",
                             transfers=["encoder", "decoder"],
                             state={f"unet.{k}": v for k, v in unet.state_dict().items()})
    cfg = cfg3d(steps=1)
    cfg.lr = 1e-12  # one step that barely moves: the weights must be the pretrained ones
    out = finetune([from_array(image, axes="ZYX")], [painted(labels)], cfg, init=pretrained).checkpoint
    assert out.init_method == "tower" and out.pools == pretrained.pools
    first = "unet.encoder.levels.0.0.weight"
    assert torch.allclose(out.state[first], unet.state_dict()[first[5:]], atol=1e-6)


def test_dense_3d_instance_labels_train_and_predict_3d_instances():
    image, labels = spheres(n=5, seed=3)
    bundle = finetune([from_array(image, axes="ZYX")], [labels], cfg3d(steps=40, target="instance")).checkpoint
    assert bundle.target == "instance" and bundle.classes == 3
    pred = predict_volumes(Predictor(bundle, PredictConfig(device="cpu", instances=True)),
                           from_array(image, axes="ZYX"))
    assert pred.labels.shape == labels.shape and pred.probabilities.shape == (24, 3, 64, 64)
    assert dice(pred.labels > 0, labels > 0) > 0.6
    assert object_scores_3d(pred.labels, labels)["f1"] > 0.5  # 3D objects, one id each through z
    assert split_share(pred.labels, labels) == 0.0


def test_retrain_on_a_3d_correction(sparse_model):
    image, labels, bundle = sparse_model
    stack = from_array(image, "spheres", axes="ZYX")
    previous = predict_volumes(Predictor(bundle), stack).labels
    corrected = previous.copy()
    corrected[12] = labels[12] > 0  # the user fixes one slice
    assert (corrected != previous).any()
    cfg = RetrainConfig(steps=10, seed=0, device="cpu")
    result = retrain(bundle, stack, previous, corrected, cfg)
    assert result.model.spatial_dims == 3 and result.planes == list(range(24))
    assert result.edited == int((corrected != previous).sum())
    assert result.prediction.labels.shape == (24, 64, 64)
    assert dice(result.labels(previous) > 0, labels > 0) > 0.6


def test_volumes_of_a_time_series_are_the_units_of_validation():
    vols = [spheres((12, 32, 32), n=3, seed=s) for s in range(4)]
    image = np.stack([v[0] for v in vols])  # (T, Z, Y, X)
    labels = np.stack([painted(v[1], [4, 8]) for v in vols]).reshape(48, 32, 32)
    stack = from_array(image, "series", axes="TZYX")
    assert (stack.z_size, stack.n_volumes) == (12, 4)
    cfg = cfg3d(steps=4, val_every=2, val_fraction=0.25)
    cfg.data.patch = 16
    result = finetune([stack], [labels], cfg)
    assert result.best_val_dice is not None  # one whole volume held out and scored
    assert result.checkpoint.config["data"]["patch_z"] == 8 and result.checkpoint.pools == [(2, 2, 2)] * 2


def test_volume_targets_keep_unannotated_voxels_and_volumes_at_0():
    scribbles = np.zeros((2 * 6, 16, 16), np.int64)  # two volumes of 6 slices; only the first is painted
    scribbles[2, 2:5, 2:5] = 1  # background stroke
    scribbles[2, 8:12, 8:12] = 2  # class stroke
    sparse = volume_targets(scribbles, 6, "sparse")
    assert np.array_equal(sparse, scribbles)  # 0 stays unannotated voxel by voxel
    binary = volume_targets((scribbles == 2).astype(np.int64), 6, "binary")
    assert set(np.unique(binary[2])) == {1, 2} and not binary[[0, 1, 3, 4, 5]].any() and not binary[6:].any()


def test_volumes_thinner_than_the_patch_are_padded_as_unannotated():
    targets = np.ones((3, 32, 32), np.uint8)
    targets[1, 10:20, 10:20] = 2
    image = np.random.default_rng(0).random((3, 1, 32, 32)).astype(np.float32)
    batch = VolumePatchSampler([LabelledVolume(image, _norm(), targets)], 32, 8).sample(4, np.random.default_rng(1))
    assert batch["image"].shape == (4, 1, 8, 32, 32)
    assert ((batch["labels"] > 0).reshape(4, 8, -1).any(-1).sum(1) == 3).all()  # 3 real slices, 5 padded ones
