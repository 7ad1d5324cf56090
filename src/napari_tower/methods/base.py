"""What every pretraining method shares: the U-Net, its heads, and the step interface."""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn

from ..config import PretrainConfig
from ..models import ProjectionHead, RestorationHead, UNet


class Method(nn.Module):
    """A self-supervised method: `step(batch)` returns its losses, "loss" being the one to minimise.

    `transfers` names the parts of `unet` that initialise the segmenter.
    """

    name: ClassVar[str] = "base"
    transfers: ClassVar[tuple[str, ...]] = ("encoder", "decoder")

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        m = cfg.model
        # 3D (issue 17): volumes (N, C, Z, Y, X), pooled along z only as the voxel size and patch depth allow
        self.unet = UNet(m.in_channels, m.base, m.depth, spatial_dims=m.spatial_dims, pools=m.pools(cfg.data.patch_z),
                         kernels=m.kernels(cfg.data.patch_z))
        self.restore = RestorationHead(m.base, m.in_channels, spatial_dims=m.spatial_dims)
        self.project = ProjectionHead(self.unet.encoder.out_channels, m.projection_dim)

    def step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The training step as `forward`, so DistributedDataParallel can wrap a method and sync its gradients."""
        return self.step(x, gen)

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, gen: torch.Generator) -> float:
        """The number early stopping watches; the restoration loss where a method has one."""
        return float(self.step(x, gen)["loss"])

    def after_step(self, progress: float) -> None:
        """Hook after each optimiser step (momentum updates); `progress` runs from 0 to 1."""


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy for EMA targets."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)
