"""Reading images, normalising them and sampling training patches."""

from .io import Image, expand_inputs, from_array, labels_as_int, read_image, read_labels, write_tiff
from .normalise import Normalisation, compute_normalisation
from .sampling import PatchSampler, Source

__all__ = [
    "Image", "Normalisation", "PatchSampler", "Source", "compute_normalisation",
    "expand_inputs", "from_array", "labels_as_int", "read_image", "read_labels", "write_tiff",
]
