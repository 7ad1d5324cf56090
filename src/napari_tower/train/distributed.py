"""Running unchanged under `torchrun`: process group, per-rank device, and the few collectives the loop needs.

`torchrun` starts one process per GPU (or per CPU slot) and sets RANK,
WORLD_SIZE and LOCAL_RANK. `Distributed.from_environment()` reads them; a
plain `python`/`napari-tower` run is a world of one and nothing here does
anything. Every rank runs the same loop on its own patches; gradients are
averaged by DistributedDataParallel; rank 0 alone writes checkpoints and
reports progress. Decisions that end the loop (Stop, divergence) are taken
from values all ranks share, so no rank is left waiting in a collective.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from ..errors import TowerError

# How long a rank waits for the others at start-up and in each collective before giving up.
TIMEOUT = timedelta(minutes=30)


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device | None = None
    owns_group: bool = False

    @classmethod
    def from_environment(cls) -> Distributed:
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise TowerError("RANK, WORLD_SIZE or LOCAL_RANK is not a number: launch with torchrun") from None
        return cls(rank, local, world)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device_name: str) -> torch.device:
        """Join the process group (NCCL on CUDA, gloo on CPU) and pick this rank's device."""
        import torch.distributed as dist

        if device_name == "mps":
            raise TowerError("distributed training on Apple MPS is not supported: use --device cpu or CUDA GPUs")
        use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
        if use_cuda:
            if not torch.cuda.is_available():
                raise TowerError("device 'cuda' was asked for but torch sees no CUDA GPU: use --device cpu")
            if self.local_rank >= torch.cuda.device_count():
                raise TowerError(
                    f"local rank {self.local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                    "start at most one process per GPU (--nproc_per_node)"
                )
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if not dist.is_initialized():
            try:
                dist.init_process_group("nccl" if use_cuda else "gloo", timeout=TIMEOUT)
            except (RuntimeError, ValueError) as exc:
                raise TowerError(
                    f"could not join the distributed job ({str(exc).splitlines()[0][:160]}): launch with torchrun, "
                    "and check MASTER_ADDR/MASTER_PORT (or --rdzv-endpoint) reach rank 0"
                ) from None
            self.owns_group = True
        return self.device

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any rank (e.g. Ctrl-C reached only one node)."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of each value over the ranks (losses of the global batch); the same dict on every rank."""
        if not self.enabled or not values:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around `module` (SyncBatchNorm on CUDA, where per-GPU batches are small)."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        # static_graph: every step uses the same parameters, while some methods never use some of them
        # (encoder-only methods leave the decoder idle), which DDP then handles without a search each step.
        if self.device is not None and self.device.type == "cuda":
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
            return DistributedDataParallel(module, device_ids=[self.device], static_graph=True)
        return DistributedDataParallel(module, static_graph=True)

    def barrier(self) -> None:
        """Wait for every rank (e.g. rank 0 writing the last checkpoint) before the run returns."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Free the run's DDP wrapper, and the process group if this run set it up (a caller's group stays)."""
        if not self.enabled:
            return
        # A run's closures hold its DDP wrapper in reference cycles; freed after the group (or at interpreter
        # exit) its gloo reducer can abort the process ("terminate called without an active exception").
        gc.collect()
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False
