"""Heads on top of the U-Net: restoration, projection and segmentation."""

from __future__ import annotations

import torch
from torch import nn

from .unet import conv_class


class RestorationHead(nn.Module):
    """1x1 convolution + sigmoid back to the input's channels (the decoder's proxy target)."""

    def __init__(self, features: int, channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.conv = conv_class(spatial_dims)(features, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


class ProjectionHead(nn.Module):
    """Global average pool, then Linear(C, C), ReLU, Linear(C, out) (spec section 3; pooled, unlike the reference)."""

    def __init__(self, channels: int, out: int = 128, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or channels
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.mean(dim=tuple(range(2, x.ndim))) if x.ndim > 2 else x)


class SegmentationHead(nn.Module):
    """1x1 convolution to class logits (a new head for fine-tuning)."""

    def __init__(self, features: int, classes: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.conv = conv_class(spatial_dims)(features, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
