"""Contrastive losses shared by the methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR's InfoNCE) over 2N projections: a[i] and b[i] are positives, the other 2N-2 negatives."""
    z = F.normalize(torch.cat([a, b]).float(), dim=1)
    n = a.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z), averaged over the batch; `z` is the (detached) target projection."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


def info_nce_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo InfoNCE: q against its key k (positive) and a queue of past keys (negatives)."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1).detach()
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.t()
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
