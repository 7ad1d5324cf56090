"""TOWER (Chen et al., arXiv 2211.14715): restoration + contrast between a clean and a corrupted view.

Spec section 4: x+ = T(x) with T = non-linear remap + block masking by default,
y = restore(unet(x+)), L_gen = L1(y, x), L_con = NT-Xent between projections of
the corrupted view's bottleneck and the clean view's encoder output
(temperature 0.1). Encoder and decoder both transfer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..proxy import compose, structure_weights
from .base import Method
from .losses import nt_xent


class Tower(Method):
    name = "tower"
    use_gen = True
    use_con = True

    def corrupt(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        weights = structure_weights(x, per_cell=True) if self.cfg.data.structure_prior else None
        return compose(x, self.cfg.tasks, gen, weights=weights)

    def step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        x_plus = self.corrupt(x, gen)
        losses: dict[str, torch.Tensor] = {}
        if self.use_gen:
            features, r_plus = self.unet(x_plus)
            losses["gen"] = F.l1_loss(self.restore(features), x)
        else:
            r_plus = self.unet.encoder(x_plus)[-1]
        if self.use_con:
            r = self.unet.encoder(x)[-1]  # clean view: encoder only (spec: same loss, fewer FLOPs)
            losses["con"] = nt_xent(self.project(r_plus), self.project(r), self.cfg.temperature, gather=self.training)
        losses["loss"] = sum(losses.values())  # type: ignore[assignment]
        return losses

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, gen: torch.Generator) -> float:
        losses = self.step(x, gen)
        return float(losses.get("gen", losses["loss"]))


class TowerGenOnly(Tower):
    """Ablation: restoration of the NL+M corruption only."""

    name = "tower-gen-only"
    use_con = False


class TowerConOnly(Tower):
    """Ablation: contrast between clean and corrupted views only; the decoder is never trained."""

    name = "tower-con-only"
    transfers = ("encoder",)
    use_gen = False
