"""napari-tower: TOWER self-supervised pretraining and few-label segmentation for microscopy.

The core (everything but `napari_tower.napari`) never imports Qt or napari.
"""

__version__ = "0.1.0"
