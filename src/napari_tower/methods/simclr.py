"""SimCLR (Chen et al. 2020): NT-Xent between two augmented views; the encoder transfers.

Temperature 0.2 (spec section 5) unless the config overrides it for TOWER only.
"""

from __future__ import annotations

import torch

from .augment import simclr_view
from .base import Method
from .losses import nt_xent

TEMPERATURE = 0.2


class SimCLR(Method):
    name = "simclr"
    transfers = ("encoder",)

    def step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        a = self.project(self.unet.encoder(simclr_view(x, gen))[-1])
        b = self.project(self.unet.encoder(simclr_view(x, gen))[-1])
        loss = nt_xent(a, b, TEMPERATURE, gather=self.training)
        return {"con": loss, "loss": loss}
