"""U-Net and heads."""

from .heads import ProjectionHead, RestorationHead, SegmentationHead
from .anisotropy import pool_schedule
from .unet import UNet

__all__ = ["ProjectionHead", "RestorationHead", "SegmentationHead", "UNet", "pool_schedule"]
