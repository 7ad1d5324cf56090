"""3D CPU defaults (issue 17): a 3D run takes them for the patch, slices and batch the user left alone."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PretrainConfig, to_dict
from napari_tower.data import from_array
from napari_tower.model_bundle import ModelBundle
from napari_tower.params import default_of
from napari_tower.segment import finetune
from napari_tower.segment.finetune3d import volume_geometry
from napari_tower.volume_defaults import (
    FINETUNE_3D,
    PRETRAIN_3D,
    apply_volume_defaults,
    describe_applied,
    left_at_default,
    volume_defaults,
)


def _used(cfg) -> tuple[int, int, int]:
    return cfg.data.patch, cfg.data.patch_z, cfg.batch


@pytest.mark.parametrize("cls,expected", [(FinetuneConfig, FINETUNE_3D), (PretrainConfig, PRETRAIN_3D)])
def test_a_3d_run_left_at_the_defaults_takes_the_3d_ones(cls, expected):
    cfg = cls(model=ModelConfig(dims="3d"))
    applied = apply_volume_defaults(cfg)
    assert _used(cfg) == (expected.patch, expected.patch_z, expected.batch)
    assert volume_defaults(cls) is expected
    # Only what changed is reported (fine-tuning keeps the 2D patch side, pretraining the 16 slices), in the
    # order patch, slices, batch.
    wanted = [("data.patch", expected.patch), ("data.patch_z", expected.patch_z), ("batch", expected.batch)]
    assert list(applied.items()) == [(p, v) for p, v in wanted if v != default_of(cls, p)]
    assert apply_volume_defaults(cfg) == {}  # idempotent: a second call changes nothing


def test_the_fine_tuning_defaults_hold_the_2d_steps_voxels():
    # The design rule behind FINETUNE_3D: a 3D step costs what the default 2D step costs.
    two_d = FinetuneConfig()
    assert FINETUNE_3D.batch * FINETUNE_3D.patch ** 2 * FINETUNE_3D.patch_z == two_d.batch * two_d.data.patch ** 2


def test_values_the_user_set_are_kept():
    # Given on the command line, even at the 2D default's value: kept.
    cfg = FinetuneConfig(batch=8, data=DataConfig(patch=128, patch_z=16), model=ModelConfig(dims="3d"))
    assert apply_volume_defaults(cfg, given={"batch", "data.patch_z"}) == {}
    assert _used(cfg) == (128, 16, 8)
    # The widget's rule (given=None): a value off the 2D default is the user's.
    cfg = PretrainConfig(batch=6, data=DataConfig(patch=96), model=ModelConfig(dims="3d"))
    assert left_at_default(cfg) == {"data.patch_z"}
    assert apply_volume_defaults(cfg) == {}  # patch_z 16 is already the pretraining default
    assert _used(cfg) == (96, 16, 6)
    cfg = FinetuneConfig(batch=6, model=ModelConfig(dims="3d"))
    assert apply_volume_defaults(cfg) == {"data.patch_z": 4}
    assert _used(cfg) == (128, 4, 6)


@pytest.mark.parametrize("cls", [FinetuneConfig, PretrainConfig])
def test_2d_runs_are_unchanged(cls):
    cfg = cls()
    assert apply_volume_defaults(cfg) == {} and apply_volume_defaults(cfg, given=()) == {}
    assert cfg == cls()


def test_the_note_names_the_values_and_the_options():
    cfg = FinetuneConfig(model=ModelConfig(dims="3d"))
    applied = apply_volume_defaults(cfg)
    note = describe_applied(applied, cfg, {"data.patch_z": "--patch-z", "batch": "--batch"})
    assert note == "3D fine-tuning defaults for a CPU: 4 slices per patch, batch 2 (set --patch-z, --batch to change)"
    assert describe_applied({}, cfg) == ""


def test_the_checkpoint_saves_the_values_the_run_used():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (12, 48, 48)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[6] = 1 + (image[6] > 0)  # one painted slice: 1 = background, 2 = class
    cfg = FinetuneConfig(steps=1, device="cpu", target="sparse", val_fraction=0.0, checkpoint_every=0,
                         model=ModelConfig(base=4, depth=2, dims="3d"))
    apply_volume_defaults(cfg)
    saved = finetune([from_array(image, "stack", axes="ZYX")], [labels], cfg).checkpoint.config
    assert (saved["data"]["patch"], saved["data"]["patch_z"], saved["batch"]) == (128, 4, 2)


def _pretrained(patch_z: int, voxel_size) -> ModelBundle:
    cfg = PretrainConfig(data=DataConfig(patch=32, patch_z=patch_z),
                         model=ModelConfig(base=4, depth=2, dims="3d", voxel_size=voxel_size))
    return ModelBundle(kind="pretrained", config=to_dict(cfg), method="tower", transfers=["encoder", "decoder"],
                       state={})


@pytest.mark.parametrize("voxel_size,expected", [
    ((8.0, 1.0, 1.0), 4),  # z is never pooled at depth 2: 4 slices pool as 16 do, the run keeps its 4
    ((1.0, 1.0, 1.0), 16),  # isotropic: 16 slices pool z twice, 4 once; the checkpoint's 16 wins
])
def test_fine_tuning_from_a_3d_checkpoint_keeps_its_own_depth_where_the_pooling_allows(voxel_size, expected):
    ckpt = _pretrained(16, voxel_size)
    cfg = FinetuneConfig(model=ModelConfig(base=4, depth=2, dims="3d"))
    apply_volume_defaults(cfg)
    images = [from_array(np.zeros((20, 32, 32), np.float32), "stack", axes="ZYX")]
    pools, depth = volume_geometry(cfg, images, ckpt)
    assert cfg.data.patch_z == expected and depth == expected
    assert [tuple(p) for p in pools] == [tuple(p) for p in ckpt.pools]
