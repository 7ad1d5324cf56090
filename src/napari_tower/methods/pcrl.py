"""PCRL-style (Zhou et al. 2021, "Preservational contrastive representation learning").

A momentum encoder (0.999) with a queue of keys supplies InfoNCE negatives, beside the batch's other keys; the
queue holds only real keys (it starts empty, not with random vectors that a short run would never replace).
The decoder restores three contexts: the transformed view, a mixup of two images, and a hybrid decoded from
mixed encoder features. Encoder and decoder transfer. Simplified from the paper: one shared decoder, no
hierarchical feature-level mixing beyond the bottleneck level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import PretrainConfig
from ..proxy import compose
from .base import Method, ema_update, momentum_copy
from .losses import info_nce_queue

MOMENTUM = 0.999
QUEUE = 1024
TEMPERATURE = 0.2


class PCRL(Method):
    name = "pcrl"

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__(cfg)
        self.key_encoder = momentum_copy(self.unet.encoder)
        self.key_project = momentum_copy(self.project)
        # Only the first `queue_ptr` rows are ever read, so the unwritten rest can stay zero.
        self.register_buffer("queue", torch.zeros(QUEUE, cfg.model.projection_dim))
        # Keys enqueued so far (older checkpoints stored this modulo QUEUE; they then use part of a full queue).
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def step(self, x: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        tasks = ("nonlinear", "shuffle", "inpaint", "outpaint")
        q_view, k_view = compose(x, tasks, gen), compose(x, tasks, gen)
        q_feats = self.unet.encoder(q_view)
        restored = self.restore(self.unet.decoder(q_feats))
        with torch.no_grad():
            k = self.key_project(self.key_encoder(k_view)[-1])
        filled = min(int(self.queue_ptr), QUEUE)
        con = info_nce_queue(self.project(q_feats[-1]), k, self.queue[:filled], TEMPERATURE)

        lam = torch.rand(x.shape[0], generator=gen).to(x.device).view(-1, *([1] * (x.ndim - 1)))  # 2D or 3D
        perm = torch.roll(torch.arange(x.shape[0], device=x.device), 1)
        mixed_target = lam * x + (1 - lam) * x[perm]
        mix_restored = self.restore(self.unet(lam * q_view + (1 - lam) * q_view[perm])[0])
        k_feats = self.unet.encoder(k_view)
        hybrid_feats = [lam * a + (1 - lam) * b[perm] for a, b in zip(q_feats, k_feats)]
        hybrid_restored = self.restore(self.unet.decoder(hybrid_feats))

        gen_loss = (F.l1_loss(restored, x) + F.l1_loss(mix_restored, mixed_target)
                    + F.l1_loss(hybrid_restored, mixed_target))
        self._enqueue(F.normalize(k.float(), dim=1))
        return {"gen": gen_loss, "con": con, "loss": gen_loss + con}

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        if not self.training:
            return
        n = keys.shape[0]
        total = int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + total) % QUEUE
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_(total + n)

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, gen: torch.Generator) -> float:
        return float(self.step(x, gen)["gen"])

    def after_step(self, progress: float) -> None:
        ema_update(self.key_encoder, self.unet.encoder, MOMENTUM)
        ema_update(self.key_project, self.project, MOMENTUM)
