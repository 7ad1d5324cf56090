"""2D U-Net with separable encoder and decoder (spec section 3).

TOWER transfers encoder and decoder; SimCLR and BYOL only the encoder. Keeping
them as two submodules makes "what transfers" a choice of state-dict prefix.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class Encoder(nn.Module):
    """Contracting path: returns the features of every level, the bottleneck last."""

    def __init__(self, in_channels: int, base: int, depth: int) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.levels = nn.ModuleList([_block(in_channels, widths[0])]
                                    + [_block(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.pool = nn.MaxPool2d(2)
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.levels[0](x)]
        for level in self.levels[1:]:
            feats.append(level(self.pool(feats[-1])))
        return feats


class Decoder(nn.Module):
    """Expanding path with skip connections; returns full-resolution features of width `base`."""

    def __init__(self, base: int, depth: int) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.ups = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                  for i in reversed(range(depth))])
        self.blocks = nn.ModuleList([_block(widths[i] * 2, widths[i]) for i in reversed(range(depth))])
        self.out_channels = base

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(feats[:-1])):
            x = block(torch.cat([up(x), skip], dim=1))
        return x


class UNet(nn.Module):
    """Encoder + decoder. `forward` returns (full-resolution features, bottleneck)."""

    def __init__(self, in_channels: int = 1, base: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.depth = depth
        self.encoder = Encoder(in_channels, base, depth)
        self.decoder = Decoder(base, depth)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder(x)
        return self.decoder(feats), feats[-1]
