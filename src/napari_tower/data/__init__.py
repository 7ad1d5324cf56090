"""Reading images, normalising them and sampling training patches."""

from .io import Image, expand_inputs, from_array, labels_as_int, read_image, read_labels, write_tiff
from .normalise import Normalisation, compute_normalisation, median_level, nearest_normalisation, stored_or_own
from .sampling import PatchSampler, Source
from .sampling3d import VolumeSampler

__all__ = [
    "Image", "Normalisation", "PatchSampler", "Source", "VolumeSampler", "compute_normalisation",
    "expand_inputs", "from_array", "labels_as_int", "median_level", "nearest_normalisation", "read_image",
    "read_labels", "stored_or_own", "write_tiff",
]
