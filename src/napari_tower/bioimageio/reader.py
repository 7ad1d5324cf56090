"""Reading back a bioimage.io model package napari-tower exported.

napari-tower's metadata (target kind, classes, training config, normalisation) sits in
the description's `config.napari_tower`; with the packaged state dict it rebuilds the
on-disk dict of a segmenter, which `ModelBundle.load` turns into a bundle (so `predict`,
`finetune --init` and the widget's Load take a package like any model file).

This module sits below `model_bundle` and imports nothing from `segment/` or `train/`.
`bioimageio.spec` is optional (`pip install "napari-tower[bioimageio]"`); it is imported
only when a package is read.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, TowerError

METADATA_KEY = "napari_tower"
INSTALL_HINT = 'install the bioimage.io libraries: pip install "napari-tower[bioimageio]"'
# Metadata the exporter adds that is no part of the model itself.
EXPORT_ONLY_KEYS = ("napari_tower_version", "normalise")


def require_bioimageio() -> None:
    """Raise a `TowerError` with the install command unless bioimageio.spec is installed."""
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise TowerError(f"bioimage.io packages need bioimageio.spec: {INSTALL_HINT}") from None


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """Whether `path` is a zip with a bioimage.io description at its top (a torch checkpoint is a zip too)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n in ("rdf.yaml", "bioimageio.yaml") or (n.endswith(".bioimageio.yaml") and "/" not in n)
               for n in names)


def payload_from_bioimageio(path: str | os.PathLike) -> dict[str, Any]:
    """The segmenter's on-disk dict rebuilt from a package napari-tower exported (`ModelBundle.load` checks it).

    The weights are read with `torch.load(weights_only=True)`, like any checkpoint. A
    bioimage.io model from elsewhere is refused with a message saying what to do instead.
    """
    require_bioimageio()
    from bioimageio.spec import InvalidDescr, load_model_description
    from bioimageio.spec.utils import get_reader

    path = Path(path)
    try:
        # No I/O checks: they would re-hash every file and try to reach any URL in the description.
        descr = load_model_description(path, perform_io_checks=False)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is a bad package for the user
        raise CheckpointError(f"{path} is not a readable bioimage.io model package ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from None
    if isinstance(descr, InvalidDescr):
        raise CheckpointError(f"{path} is not a valid bioimage.io model description: check it with "
                              f"`bioimageio validate {path}`")
    config = descr.config.model_extra or {}
    meta = config.get(METADATA_KEY)
    state_entry = descr.weights.pytorch_state_dict
    if not isinstance(meta, dict) or meta.get("kind") != "segmenter":
        raise CheckpointError(
            f"{path} is a bioimage.io model, but not one napari-tower exported, so there is no napari-tower "
            "model in it: run it with bioimageio.core (`bioimageio predict`) or in another bioimage.io consumer")
    if state_entry is None:
        raise CheckpointError(f"{path} holds no PyTorch state dict (only {', '.join(_formats(descr))}): "
                              "export it again with the pytorch_state_dict weights (the default)")
    try:
        raw = get_reader(state_entry.source).read()
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"the weights in {path} are damaged or unsafe ({type(exc).__name__}): "
                              "export the model again") from None
    return {**{k: v for k, v in meta.items() if k not in EXPORT_ONLY_KEYS}, "state": state, "source": str(path)}


def _formats(descr: Any) -> list[str]:
    return [name for name, entry in descr.weights if entry is not None]


__all__ = ["INSTALL_HINT", "METADATA_KEY", "is_bioimageio_package", "payload_from_bioimageio", "require_bioimageio"]
