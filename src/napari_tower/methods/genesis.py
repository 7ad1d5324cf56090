"""Models Genesis (Zhou et al. 2019): restore the clean patch from the full set of corruptions.

L1 restoration only (the original used MSE; L1 matches TOWER's L_gen so the two differ
only in their tasks and the contrastive term). Encoder and decoder transfer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import PROXY_TASKS
from ..proxy import compose
from .base import Method


class Genesis(Method):
    name = "genesis"

    def step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        tasks = tuple(t for t in PROXY_TASKS if t != "masking")
        features, _ = self.unet(compose(x, tasks, gen))
        loss = F.l1_loss(self.restore(features), x)
        return {"gen": loss, "loss": loss}
