"""Batched view augmentations for SimCLR and BYOL (spec section 5), all in torch, seeded.

Volumes (N, C, Z, Y, X; issue 17) are cropped, rotated and blurred in-plane (every slice of a
sample alike) and also flipped along z: z is often sampled more coarsely than y and x, so
nothing mixes z with the in-plane axes. 2D batches draw the same random numbers as before.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rand(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen).to(device)


def _planes(x: torch.Tensor) -> torch.Tensor:
    """A volume batch (N, C, Z, Y, X) as (N, C * Z, Y, X), so in-plane operations treat slices as channels."""
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1]) if x.ndim == 5 else x


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) values shaped to broadcast over `x` (4-D or 5-D)."""
    return v.view(-1, *([1] * (x.ndim - 1)))


def random_resized_crop(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.2, 1.0)) -> torch.Tensor:
    """Crop an area share in `scale` (aspect 3/4..4/3) and resize back, via one batched affine grid (in-plane)."""
    if x.ndim == 5:
        return random_resized_crop(_planes(x), gen, scale).view(x.shape)
    n, device = x.shape[0], x.device
    area = scale[0] + (scale[1] - scale[0]) * _rand(n, gen, device)
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * _rand(n, gen, device)
    ratio = torch.exp(log_ratio)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (1 - sw) * (2 * _rand(n, gen, device) - 1)
    ty = (1 - sh) * (2 * _rand(n, gen, device) - 1)
    theta = torch.zeros(n, 2, 3, device=device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, tx, sh, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def flip_rotate(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and rotation by a multiple of 90 degrees per sample (square patches); volumes are
    also flipped along z at random."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    k = torch.randint(0, 4, (n,), generator=gen)
    out = torch.where(_per_sample(flip.to(x.device), x), x.flip(-1), x)
    if x.ndim == 5:
        flip_z = torch.rand(n, generator=gen) < 0.5
        out = torch.where(_per_sample(flip_z.to(x.device), x), out.flip(2), out)
    rotated = [out]
    for r in range(1, 4):
        rotated.append(torch.rot90(out, r, dims=(-2, -1)))
    stacked = torch.stack(rotated)  # (4, N, C, [Z,] H, W)
    return stacked[k.to(x.device), torch.arange(n, device=x.device)]


def jitter(x: torch.Tensor, gen: torch.Generator, strength: float = 0.4, p: float = 0.8) -> torch.Tensor:
    """Brightness and contrast jitter by up to `strength`, applied with probability p."""
    n, device = x.shape[0], x.device
    apply = _per_sample((_rand(n, gen, device) < p).float(), x)
    b = _per_sample(2 * _rand(n, gen, device) - 1, x) * strength * apply
    c = 1 + _per_sample(2 * _rand(n, gen, device) - 1, x) * strength * apply
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return ((x - mean) * c + mean + b * 0.5).clamp(0, 1)


def blur(x: torch.Tensor, gen: torch.Generator, p: float = 0.5, max_sigma: float = 2.0) -> torch.Tensor:
    """Gaussian blur with sigma in [0.1, max_sigma] with probability p (separable, per-sample kernels; in-plane)."""
    if x.ndim == 5:
        return blur(_planes(x), gen, p, max_sigma).view(x.shape)
    n, c, h, w = x.shape
    device = x.device
    sigma = 0.1 + (max_sigma - 0.1) * _rand(n, gen, device)
    apply = _rand(n, gen, device) < p
    radius = math.ceil(3 * max_sigma)
    t = torch.arange(-radius, radius + 1, device=device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # (N, K)
    weight = k.repeat_interleave(c, 0)  # (N*C, K)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), weight[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), weight[:, None, :, None], groups=n * c)
    y = y.reshape(n, c, h, w)
    return torch.where(apply[:, None, None, None], y, x)


def noise(x: torch.Tensor, gen: torch.Generator, sigma: float = 0.03) -> torch.Tensor:
    """Mild additive Gaussian noise."""
    return (x + sigma * torch.randn(x.shape, generator=gen).to(x.device)).clamp(0, 1)


def simclr_view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One SimCLR/BYOL view: crop, flip/rot90, jitter, blur, noise."""
    return noise(blur(jitter(flip_rotate(random_resized_crop(x, gen), gen), gen), gen), gen)
