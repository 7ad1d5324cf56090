"""The segmenter: a U-Net with a segmentation head, built from or saved to a checkpoint."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import SegmentationHead, UNet


class Segmenter(nn.Module):
    """U-Net + 1x1 head giving class logits (background first)."""

    def __init__(self, in_channels: int, classes: int, base: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.unet = UNet(in_channels, base, depth)
        self.head = SegmentationHead(base, classes)
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unet(x)[0])


def segmenter_from_checkpoint(ckpt: dict[str, Any]) -> Segmenter:
    """Rebuild a fine-tuned segmenter from its checkpoint (eval mode, CPU)."""
    m = ckpt["config"]["model"]
    model = Segmenter(m["in_channels"], int(ckpt["classes"]), m["base"], m["depth"])
    model.load_state_dict(ckpt["state"])
    return model.eval()
