"""BYOL (Grill et al. 2020): predict an EMA target's projection of another view; the encoder transfers.

Momentum rises from 0.99 to 1 on a cosine schedule; loss 2 - 2 cos, symmetrised.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import PretrainConfig
from .augment import simclr_view
from .base import Method, ema_update, momentum_copy
from .losses import byol_loss

BASE_MOMENTUM = 0.99


class BYOL(Method):
    name = "byol"
    transfers = ("encoder",)

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__(cfg)
        dim = cfg.model.projection_dim
        self.predict = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                                     nn.Linear(dim, dim))
        self.target_encoder = momentum_copy(self.unet.encoder)
        self.target_project = momentum_copy(self.project)

    def step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        v1, v2 = simclr_view(x, gen), simclr_view(x, gen)
        p1 = self.predict(self.project(self.unet.encoder(v1)[-1]))
        p2 = self.predict(self.project(self.unet.encoder(v2)[-1]))
        with torch.no_grad():
            z1 = self.target_project(self.target_encoder(v1)[-1])
            z2 = self.target_project(self.target_encoder(v2)[-1])
        loss = 0.5 * (byol_loss(p1, z2) + byol_loss(p2, z1))
        return {"byol": loss, "loss": loss}

    def after_step(self, progress: float) -> None:
        m = 1 - (1 - BASE_MOMENTUM) * (math.cos(math.pi * progress) + 1) / 2
        ema_update(self.target_encoder, self.unet.encoder, m)
        ema_update(self.target_project, self.project, m)
