"""Every pretraining method trains: its loss falls on real (or synthetic) microscopy patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_tower.config import METHODS, DataConfig, ModelConfig, PretrainConfig
from napari_tower.data import from_array, read_image
from napari_tower.methods import METHOD_CLASSES, build_method
from napari_tower.methods.losses import nt_xent
from napari_tower.train import pretrain

from ..conftest import ISBI, blobs


def _images():
    path = ISBI / "train-volume.tif"
    if path.exists():
        return [read_image(path)]
    return [from_array(np.stack([blobs((160, 160), 20, seed=s)[0] for s in range(4)]), "blobs", axes="ZYX")]


def _cfg(method, steps):
    return PretrainConfig(method=method, steps=steps, batch=8, lr=2e-3, seed=0, val_every=0, checkpoint_every=0,
                          data=DataConfig(patch=64), model=ModelConfig(base=8, depth=3))


def test_registry_covers_every_configured_method():
    assert set(METHOD_CLASSES) == set(METHODS)


def test_nt_xent_prefers_matching_pairs():
    a = torch.randn(8, 16)
    assert nt_xent(a, a + 0.01 * torch.randn(8, 16), 0.1) < nt_xent(a, torch.randn(8, 16), 0.1)


@pytest.mark.parametrize("method", METHODS)
def test_loss_decreases(method):
    torch.manual_seed(0)
    history = pretrain(_images(), _cfg(method, 40)).checkpoint.history
    # PCRL's contrastive term grows while its queue fills (more negatives every step),
    # so its restoration term is the one that must fall.
    loss = np.asarray(history["gen" if method == "pcrl" else "loss"])
    assert np.isfinite(loss).all()
    assert loss[-10:].mean() < loss[:5].mean(), f"{method}: {loss[:5].mean():.4f} -> {loss[-10:].mean():.4f}"


def test_tower_uses_both_terms_and_transfers_encoder_and_decoder():
    cfg = _cfg("tower", 1)
    method = build_method(cfg)
    losses = method.step(torch.rand(4, 1, 64, 64), torch.Generator().manual_seed(0))
    assert set(losses) == {"gen", "con", "loss"}
    assert torch.isclose(losses["loss"], losses["gen"] + losses["con"])
    assert method.transfers == ("encoder", "decoder")
    assert METHOD_CLASSES["simclr"].transfers == ("encoder",) and METHOD_CLASSES["byol"].transfers == ("encoder",)


def test_steps_zero_resume_and_init(tmp_path):
    images = _images()
    zero = pretrain(images, _cfg("tower", 0), tmp_path / "zero.pt")
    assert zero.path.exists() and zero.checkpoint.step == 0
    full = pretrain(images, _cfg("tower", 6)).checkpoint.history["loss"]
    cfg = _cfg("tower", 6)
    stop_at = iter(range(100))
    part = pretrain(images, cfg, tmp_path / "part.pt", should_stop=lambda: next(stop_at) >= 3)
    assert part.last.stopped and part.checkpoint.step == 3
    resumed = pretrain(images, _cfg("tower", 6), tmp_path / "part.pt", resume=tmp_path / "part.pt")
    # Resuming replays the same batches with the same schedule: the history continues the uninterrupted run.
    np.testing.assert_allclose(resumed.checkpoint.history["loss"], full, rtol=1e-4, atol=1e-5)
    warm = pretrain(images, _cfg("genesis", 1), init=tmp_path / "part.pt")
    assert warm.checkpoint.step == 1


def test_pcrl_negatives_are_real_keys_only():
    """PCRL's queue starts empty, not with random vectors a short run never replaces: until it holds keys the
    batch's own keys are the negatives, and rows not yet written never enter the loss."""
    method = build_method(_cfg("pcrl", 1))
    method.train()
    x = torch.rand(4, 1, 64, 64)
    first = method.step(x, torch.Generator().manual_seed(0))
    assert torch.isfinite(first["con"]) and first["con"] > 0
    assert int(method.queue_ptr) == 4
    written = method.queue[:4].clone()
    assert torch.allclose(written.norm(dim=1), torch.ones(4))
    again = method.step(x, torch.Generator().manual_seed(1))
    method.queue_ptr.fill_(4)
    method.queue[4:] = torch.nn.functional.normalize(torch.randn_like(method.queue[4:]), dim=1)
    method.queue[:4] = written
    with torch.no_grad():
        scrambled = method.step(x, torch.Generator().manual_seed(1))["con"]
    method.queue[4:] = 0
    method.queue[:4] = written
    method.queue_ptr.fill_(4)
    with torch.no_grad():
        zeroed = method.step(x, torch.Generator().manual_seed(1))["con"]
    assert torch.isclose(scrambled, zeroed)  # the unwritten rows do not count
    assert torch.isfinite(again["con"])
