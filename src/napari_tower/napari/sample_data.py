"""Sample data for File > Open Sample > napari-tower, usable offline.

- `nuclei`: a fluorescence nuclei image from the Kaggle Data Science Bowl 2018
  (BBBC038, stage1_train image 6b72b61b8006..., CC0), bundled with the package
  (`sample_nuclei.tif`, 520 x 696 uint8) with its instance masks
  (`sample_nuclei_labels.tif`), so the sample and the quick start need no network.
- `human_mitosis`: human U2OS cells undergoing mitosis (Moffat et al. 2006,
  CC0, the scikit-image data repository), fetched with pooch against a known
  SHA-256 for users online; on any error (offline, moved, wrong hash) it falls
  back to the bundled nuclei image with a warning.

This module imports neither napari nor Qt.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
NUCLEI_FILE = HERE / "sample_nuclei.tif"
NUCLEI_LABELS_FILE = HERE / "sample_nuclei_labels.tif"
NUCLEI_SHA256 = "d2588daf0dd1fcf5c0e134db869c3648306298afe94392bb04c2acd8e0771d56"

MITOSIS_URL = ("https://gitlab.com/scikit-image/data/-/raw/2cdc5ce89b334d28f06a58c9f0ca21aa6992a5ba/"
               "AS_09125_050116030001_D03f00d0.tif")
MITOSIS_SHA256 = "2751ba667c4067c5d30817cff004aa06f6f6287f1cdbb5b8c9c6a500308cb456"

LayerData = tuple[Any, dict[str, Any], str]


def _read_tif(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path))


def sample_nuclei_array() -> np.ndarray:
    """The bundled nuclei image (520, 696) uint8; checked against its SHA-256."""
    digest = hashlib.sha256(NUCLEI_FILE.read_bytes()).hexdigest()
    if digest != NUCLEI_SHA256:
        raise OSError(f"{NUCLEI_FILE} is damaged (SHA-256 {digest[:12]}...): reinstall napari-tower")
    return _read_tif(NUCLEI_FILE)


def sample_nuclei_labels_array() -> np.ndarray:
    """Instance masks (0 = background, 1..N nuclei) of the bundled nuclei image."""
    return _read_tif(NUCLEI_LABELS_FILE).astype(np.int32)


def fetch_human_mitosis(timeout: float = 10.0) -> Path:
    """Download (once, into pooch's cache) the human mitosis image, verified by SHA-256."""
    import pooch

    return Path(pooch.retrieve(MITOSIS_URL, known_hash=f"sha256:{MITOSIS_SHA256}", fname="human_mitosis.tif",
                               path=pooch.os_cache("napari-tower"), progressbar=False,
                               downloader=pooch.HTTPDownloader(timeout=timeout)))


def nuclei() -> list[LayerData]:
    """npe2 sample: the bundled DSB 2018 nuclei image."""
    return [(sample_nuclei_array(), {"name": "nuclei (DSB 2018)", "colormap": "gray"}, "image")]


def nuclei_with_labels() -> list[LayerData]:
    """npe2 sample: the bundled nuclei image and its ground-truth instance labels."""
    return nuclei() + [(sample_nuclei_labels_array(), {"name": "nuclei ground truth", "opacity": 0.5}, "labels")]


def human_mitosis() -> list[LayerData]:
    """npe2 sample: the human mitosis image (download), or the bundled nuclei when offline."""
    try:
        data = _read_tif(fetch_human_mitosis())
    except Exception as exc:  # noqa: BLE001 - any failure (offline, hash, IO) falls back to the bundled image
        warnings.warn(f"could not fetch the human mitosis sample ({type(exc).__name__}); "
                      "opened the bundled nuclei sample instead", stacklevel=2)
        return nuclei()
    return [(data, {"name": "human mitosis", "colormap": "gray"}, "image")]
