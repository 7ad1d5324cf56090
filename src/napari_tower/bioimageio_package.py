"""Kept for packages exported before this module moved to `napari_tower.bioimageio.exporter`.

Their `rdf.yaml` names `napari_tower.bioimageio_package.ProbabilitySegmenter` as the
architecture of the PyTorch state dict, so bioimage.io consumers import it from here.
New code imports from `napari_tower.bioimageio.exporter` / `.reader`.
"""

from .bioimageio.exporter import ProbabilitySegmenter

__all__ = ["ProbabilitySegmenter"]
