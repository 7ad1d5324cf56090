"""Seeded random draws the 2D and 3D proxy tasks share: every number comes from the caller's generator,
drawn on its device and moved to the batch's (so a CPU generator drives CUDA batches too)."""

from __future__ import annotations

import torch

from ..errors import TowerError


def _check_p(p: float, name: str = "p") -> None:
    if not 0.0 <= float(p) <= 1.0:
        raise TowerError(f"{name}={p} is not a probability: use a value in [0, 1]")


def _rand(gen: torch.Generator, shape: tuple[int, ...], device: torch.device,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn with `gen` on its own device, then moved to `device`."""
    u = torch.rand(shape, generator=gen, device=gen.device, dtype=dtype)
    return u if u.device == device else u.to(device)


def _randint(gen: torch.Generator, low, high, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Integers uniform in [low, high] (inclusive; `low`/`high` ints or broadcastable tensors)."""
    if isinstance(low, int) and isinstance(high, int):
        value = torch.randint(low, high + 1, shape, generator=gen, device=gen.device)
        return value if value.device == device else value.to(device)
    u = _rand(gen, shape, device)
    value = torch.floor(u * (high - low + 1)).long() + low
    return torch.minimum(value, torch.as_tensor(high, device=device))


def _chance(gen: torch.Generator, n: int, p: float, device: torch.device) -> torch.Tensor:
    """(N,) bool: which samples a task with probability `p` applies to."""
    if p >= 1.0:
        return torch.ones(n, dtype=torch.bool, device=device)
    return _rand(gen, (n,), device) < p


def _noise_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return _rand(gen, tuple(x.shape), x.device, torch.float32).to(x.dtype)
