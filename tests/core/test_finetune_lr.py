"""Fine-tuning's learning-rate options for pretrained layers: a separate rate and a warm-up."""

from __future__ import annotations

import torch

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig
from napari_tower.data import from_array
from napari_tower.generalist import generalist_path
from napari_tower.model_bundle import ModelBundle
from napari_tower.segment import finetune
from napari_tower.train.engine import cosine_lr_at

from ..conftest import blobs


def test_warmup_ramps_to_the_cosine_curve_and_groups_keep_their_scale():
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 1.0},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.25}], lr=1.0)
    cosine_lr_at(opt, 1.0, 0.0, warmup=0.1)
    assert opt.param_groups[0]["lr"] == 0.0
    cosine_lr_at(opt, 1.0, 0.05, warmup=0.1)
    half = opt.param_groups[0]["lr"]
    assert 0.49 < half < 0.5  # half-way up the ramp, onto a curve just below 1
    assert abs(opt.param_groups[1]["lr"] - 0.25 * half) < 1e-9
    cosine_lr_at(opt, 1.0, 0.5, warmup=0.1)
    assert abs(opt.param_groups[0]["lr"] - 0.5) < 1e-9  # after the ramp: the plain cosine


def test_a_zero_rate_for_pretrained_layers_freezes_them_while_the_head_learns():
    image, labels = blobs((64, 64), seed=3)
    generalist = ModelBundle.load(generalist_path())
    cfg = FinetuneConfig(steps=3, batch=2, device="cpu", val_every=0, checkpoint_every=0, pretrained_lr_scale=0.0,
                         data=DataConfig(patch=32), model=ModelConfig(base=16, depth=4))
    result = finetune([from_array(image[None], "blobs", axes="ZYX")], [labels[None]], cfg, init=generalist)
    state = result.checkpoint.state
    encoder_keys = [k for k in generalist.state if k.startswith("unet.encoder.") and k.endswith("weight")]
    assert encoder_keys
    for k in encoder_keys:
        assert torch.equal(state[k].float(), generalist.state[k].float()), k
    head = [k for k in state if not k.startswith(("unet.encoder.", "unet.decoder."))]
    assert head  # the output layer is not pretrained: it trained at the full rate
    fresh = finetune([from_array(image[None], "blobs", axes="ZYX")], [labels[None]],
                     FinetuneConfig(steps=3, batch=2, device="cpu", val_every=0, checkpoint_every=0,
                                    data=DataConfig(patch=32), model=ModelConfig(base=16, depth=4)),
                     init=generalist)
    assert any(not torch.equal(fresh.checkpoint.state[k].float(), generalist.state[k].float()) for k in encoder_keys)
