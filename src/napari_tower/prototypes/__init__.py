"""Label-free start: a prototype dictionary over pretrained pixel embeddings, turned into pseudo-labels."""

from .dictionary import (
    Assignment,
    PrototypeResult,
    Prototypes,
    class_margin,
    find_prototypes,
    majority_mapping,
    most_typical_image,
    parse_mapping,
    pseudo_labels,
)
from .features import PixelEmbedder
from .gallery import GalleryCrop, gallery_crops, gallery_mosaic, prototype_colours, tinted, write_gallery
from .kmeans import kmeans

__all__ = [
    "Assignment", "GalleryCrop", "PixelEmbedder", "PrototypeResult", "Prototypes", "class_margin", "find_prototypes",
    "gallery_crops", "gallery_mosaic", "kmeans", "majority_mapping", "most_typical_image", "parse_mapping",
    "prototype_colours", "pseudo_labels", "tinted", "write_gallery",
]
