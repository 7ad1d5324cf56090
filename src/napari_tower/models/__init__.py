"""U-Net and heads."""

from .heads import ProjectionHead, RestorationHead, SegmentationHead
from .unet import UNet

__all__ = ["ProjectionHead", "RestorationHead", "SegmentationHead", "UNet"]
