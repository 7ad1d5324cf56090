"""Contrastive losses shared by the methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """Every rank's rows, concatenated in rank order; gradients flow back to the rank that made each row.

    (torch.distributed.nn.functional.all_gather does this but is deprecated in favour of a private API.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)  # each rank's loss has a gradient for every rank's rows: sum them
        n = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * n:(rank + 1) * n]


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float, gather: bool = False) -> torch.Tensor:
    """NT-Xent (SimCLR's InfoNCE) over 2N projections: a[i] and b[i] are positives, the other 2N-2 negatives.

    With `gather` under DistributedDataParallel, every rank's projections are gathered (with
    gradients) and serve as negatives too, so the loss is the one of the global batch: each rank
    scores its own 2N anchors against all 2N x world candidates. Without a process group it is a no-op.
    """
    za, zb = F.normalize(a.float(), dim=1), F.normalize(b.float(), dim=1)
    n = za.shape[0]
    rank, world = _world() if gather else (0, 1)
    if world > 1:
        all_a, all_b = _GatherWithGrad.apply(za), _GatherWithGrad.apply(zb)
    else:
        all_a, all_b = za, zb
    total = all_a.shape[0]
    anchors = torch.cat([za, zb])
    sim = anchors @ torch.cat([all_a, all_b]).t() / temperature
    own = torch.arange(n, device=za.device) + rank * n  # this rank's rows among the gathered ones
    rows = torch.arange(2 * n, device=za.device)
    sim[rows, torch.cat([own, own + total])] = float("-inf")  # an anchor is not its own negative
    targets = torch.cat([own + total, own])
    return F.cross_entropy(sim, targets)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z), averaged over the batch; `z` is the (detached) target projection."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


def info_nce_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo InfoNCE: q against its own key k (positive), the batch's other keys and a queue of past keys
    (negatives). The queue may be empty (a run's first step): the batch's keys are negatives enough."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1).detach()
    keys = torch.cat([k, queue.to(k.dtype)], dim=0)
    logits = q @ keys.t() / temperature
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))
