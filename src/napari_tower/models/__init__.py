"""U-Net and heads."""

from .anisotropy import conv_kernels, pool_schedule
from .heads import ProjectionHead, RestorationHead, SegmentationHead
from .unet import UNet

__all__ = ["ProjectionHead", "RestorationHead", "SegmentationHead", "UNet", "conv_kernels", "pool_schedule"]
