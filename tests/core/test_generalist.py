"""The built-in generalist checkpoint: packaged in float16 with its recipe, verified by hash, used offline."""

from __future__ import annotations

import pytest
import torch

from napari_tower import generalist
from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PretrainConfig
from napari_tower.data import from_array
from napari_tower.errors import TowerError
from napari_tower.model_bundle import ModelBundle
from napari_tower.segment import finetune
from napari_tower.train import pretrain

from ..conftest import blobs

SMALL = dict(data=DataConfig(patch=32), model=ModelConfig(base=4, depth=2))


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    image, _ = blobs((64, 64), seed=2)
    run = pretrain([from_array(image)], PretrainConfig(steps=3, batch=2, device="cpu", val_every=0, **SMALL)).checkpoint
    out = tmp_path_factory.mktemp("generalist") / "generalist.pt"
    digest = generalist.package_generalist(run, out, {"steps": 3, "corpus": [{"dataset": "blobs", "file": "x"}]})
    return run, out, digest


def test_packaging_halves_the_weights_drops_the_optimiser_and_keeps_the_recipe(packaged):
    run, out, digest = packaged
    shipped = ModelBundle.load(out, "pretrained")
    assert shipped.optimizer is None and run.optimizer is not None
    assert shipped.extra["recipe"]["corpus"][0]["dataset"] == "blobs"
    assert all(v.dtype == torch.float16 for v in shipped.state.values() if v.is_floating_point())
    assert all(torch.allclose(shipped.state[k].float(), run.state[k].float(), atol=1e-2, rtol=1e-3) for k in run.state)
    assert generalist.verify(out, digest) == out


def test_a_file_whose_hash_does_not_match_is_refused(packaged, tmp_path):
    _, out, digest = packaged
    damaged = tmp_path / "generalist.pt"
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(TowerError, match=r"does not match its recorded hash.*reinstall"):
        generalist.verify(damaged, digest)
    with pytest.raises(TowerError, match="missing"):
        generalist.verify(tmp_path / "absent.pt", digest)


def test_fine_tuning_starts_from_the_packaged_weights_offline(packaged):
    _, out, _ = packaged
    image, truth = blobs((64, 64), seed=3)
    cfg = FinetuneConfig(steps=1, batch=2, device="cpu", val_every=0, checkpoint_every=0, **SMALL)
    tuned = finetune([from_array(image)], [(truth > 0)[None]], cfg, init=str(out)).checkpoint
    assert tuned.init_method == "tower" and tuned.state["unet.encoder.levels.0.0.weight"].dtype == torch.float32


def test_start_from_choices():
    assert generalist.resolve_init(None) is None and generalist.resolve_init("scratch") is None
    assert generalist.resolve_init("model.pt") == "model.pt"
    if generalist.available():  # the shipped file, checked against its recorded hash
        path = generalist.resolve_init("generalist")
        assert ModelBundle.load(path, "pretrained").extra["recipe"]["corpus"]
    else:
        with pytest.raises(TowerError, match="no built-in generalist"):
            generalist.resolve_init("generalist")
