"""TOWER (Chen et al., arXiv 2211.14715): restoration + contrast between a clean and a corrupted view.

Spec section 4: x+ = T(x) with T = non-linear remap + block masking by default,
y = restore(unet(x+)), L_gen = L1(y, x), L_con = NT-Xent between projections of
the corrupted view's bottleneck and the clean view's encoder output
(temperature 0.1). Encoder and decoder both transfer.
"""

from __future__ import annotations

from collections.abc import Sequence

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
        cfg = self.cfg
        masking: dict[str, object] = {"ratio": cfg.mask_ratio, "cell": cfg.mask_cell}
        cell_z = None
        if x.ndim == 5:  # volumes: cells as deep in z as they are wide in physical units
            cell_z = masking["cell_z"] = mask_cell_z(cfg.mask_cell, cfg.model.voxel_size, x.shape[2])
        weights = (structure_weights(x, per_cell=True, cell=cfg.mask_cell, cell_z=cell_z)
                   if cfg.data.structure_prior else None)
        options = {"nonlinear": {"p": cfg.remap_p}, "masking": masking}
        return compose(x, cfg.tasks, gen, weights=weights, options=options)

    def step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        # The corrupted view may be a shifted crop of the clean one: the restoration target moves with it,
        # and the contrast must then match views whose content only partly overlaps.
        shifted = shift_views(x, self.cfg.view_shift, gen) if self.cfg.view_shift else x
        x_plus = self.corrupt(shifted, gen)
        losses: dict[str, torch.Tensor] = {}
        if self.use_gen:
            features, r_plus = self.unet(x_plus)
            losses["gen"] = F.l1_loss(self.restore(features), shifted)
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


def mask_cell_z(cell: int, voxel_size: Sequence[float], depth: int) -> int:
    """The z side of a 3D mask cell: `cell` voxels scaled by the in-plane to z spacing ratio, within the patch."""
    z, y, _ = (float(v) for v in voxel_size)
    return max(1, min(depth, round(cell * y / z)))


def shift_views(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each sample translated by its own random (dy, dx) in [-shift, shift], reflecting at the borders.

    Volumes (N, C, Z, Y, X) shift in-plane only: every slice by the sample's (dy, dx).
    """
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    s = min(shift, h - 1, w - 1)
    padded = F.pad(x, (s, s, s, s) + ((0, 0) if x.ndim == 5 else ()), mode="reflect")
    offsets = torch.randint(0, 2 * s + 1, (n, 2), generator=gen).tolist()
    return torch.stack([padded[i, ..., dy: dy + h, dx: dx + w] for i, (dy, dx) in enumerate(offsets)])


class TowerGenOnly(Tower):
    """Ablation: restoration of the NL+M corruption only."""

    name = "tower-gen-only"
    use_con = False


class TowerConOnly(Tower):
    """Ablation: contrast between clean and corrupted views only; the decoder is never trained."""

    name = "tower-con-only"
    transfers = ("encoder",)
    use_gen = False
