"""U-Net with separable encoder and decoder, in 2D or 3D (spec section 3; issue 17).

TOWER transfers encoder and decoder; SimCLR and BYOL only the encoder. Keeping
them as two submodules makes "what transfers" a choice of state-dict prefix.

In 3D each level pools by a per-axis factor (`pools`), so an anisotropic
volume (z spacing several times the in-plane spacing) is pooled only in y and
x until its voxels are near-isotropic; `anisotropy.pool_schedule` picks the
factors from the voxel size. 2D models keep their parameter names and
state dicts, so every 2D checkpoint loads unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_UP = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def conv_class(spatial_dims: int) -> type[nn.Module]:
    """nn.Conv2d or nn.Conv3d."""
    return _CONV[spatial_dims]


def _block(cin: int, cout: int, dims: int = 2, kernel: Sequence[int] | None = None) -> nn.Sequential:
    conv, norm = _CONV[dims], _NORM[dims]
    size = tuple(kernel) if kernel is not None else 3
    pad = tuple(k // 2 for k in kernel) if kernel is not None else 1
    return nn.Sequential(
        conv(cin, cout, size, padding=pad, bias=False), norm(cout), nn.ReLU(inplace=True),
        conv(cout, cout, size, padding=pad, bias=False), norm(cout), nn.ReLU(inplace=True),
    )


def default_pools(spatial_dims: int, depth: int) -> list[tuple[int, ...]]:
    """Isotropic pooling: a factor 2 along every axis at every level."""
    return [(2,) * spatial_dims for _ in range(depth)]


class Encoder(nn.Module):
    """Contracting path: returns the features of every level, the bottleneck last."""

    def __init__(self, in_channels: int, base: int, depth: int, spatial_dims: int = 2,
                 pools: Sequence[Sequence[int]] | None = None,
                 kernels: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        k = list(kernels) if kernels is not None else [None] * (depth + 1)
        self.levels = nn.ModuleList([_block(in_channels, widths[0], spatial_dims, k[0])]
                                    + [_block(widths[i - 1], widths[i], spatial_dims, k[i])
                                       for i in range(1, depth + 1)])
        pools = [tuple(p) for p in (pools or default_pools(spatial_dims, depth))]
        # Pooling has no parameters, so a list of them leaves the state dict as it was with one module.
        self.pools = nn.ModuleList([_POOL[spatial_dims](p, stride=p) for p in pools])
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.levels[0](x)]
        for pool, level in zip(self.pools, self.levels[1:]):
            feats.append(level(pool(feats[-1])))
        return feats


class Decoder(nn.Module):
    """Expanding path with skip connections; returns full-resolution features of width `base`."""

    def __init__(self, base: int, depth: int, spatial_dims: int = 2,
                 pools: Sequence[Sequence[int]] | None = None,
                 kernels: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        pools = [tuple(p) for p in (pools or default_pools(spatial_dims, depth))]
        k = list(kernels) if kernels is not None else [None] * (depth + 1)
        up = _UP[spatial_dims]
        self.ups = nn.ModuleList([up(widths[i + 1], widths[i], pools[i], stride=pools[i])
                                  for i in reversed(range(depth))])
        self.blocks = nn.ModuleList([_block(widths[i] * 2, widths[i], spatial_dims, k[i])
                                     for i in reversed(range(depth))])
        self.out_channels = base

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(feats[:-1])):
            x = block(torch.cat([up(x), skip], dim=1))
        return x


class UNet(nn.Module):
    """Encoder + decoder. `forward` returns (full-resolution features, bottleneck).

    `spatial_dims` is 2 (input N, C, H, W) or 3 (N, C, Z, Y, X); `pools` gives
    each level's pooling factor per axis (default 2 everywhere) and `kernels` each level's
    convolution size per axis (depth + 1 levels, odd sizes; default 3 everywhere).
    """

    def __init__(self, in_channels: int = 1, base: int = 16, depth: int = 4, spatial_dims: int = 2,
                 pools: Sequence[Sequence[int]] | None = None,
                 kernels: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
        pools = [tuple(int(f) for f in p) for p in (pools or default_pools(spatial_dims, depth))]
        if len(pools) != depth or any(len(p) != spatial_dims for p in pools):
            raise ValueError(f"pools must give {depth} levels of {spatial_dims} factors, got {pools}")
        if kernels is not None:
            kernels = [tuple(int(k) for k in level) for level in kernels]
            if len(kernels) != depth + 1 or any(len(k) != spatial_dims or min(k) < 1 or not all(v % 2 for v in k)
                                                for k in kernels):
                raise ValueError(f"kernels must give {depth + 1} levels of {spatial_dims} odd sizes, got {kernels}")
        self.depth = depth
        self.spatial_dims = spatial_dims
        self.pools = pools
        self.kernels = kernels
        self.encoder = Encoder(in_channels, base, depth, spatial_dims, pools, kernels)
        self.decoder = Decoder(base, depth, spatial_dims, pools, kernels)

    @property
    def multiples(self) -> tuple[int, ...]:
        """Per axis, the multiple every spatial size must be."""
        out = [1] * self.spatial_dims
        for p in self.pools:
            out = [o * f for o, f in zip(out, p)]
        return tuple(out)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (the largest per-axis multiple)."""
        return max(self.multiples)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(x)
        return self.decoder(feats), feats[-1]
