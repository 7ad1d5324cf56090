"""One-file checkpoints: weights, config, normalisation, method and history.

Written atomically (temp file, fsync, rename) so an interrupted write never
replaces a good checkpoint with half a file. Read with
`torch.load(weights_only=True)`, which refuses any pickled object other than
tensors and plain containers, so a checkpoint can never run code on load.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, TowerError

FORMAT = "napari-tower"
VERSION = 1
KINDS = ("pretrained", "segmenter")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` (tensors and plain Python values only) atomically to `path`."""
    path = Path(path)
    if payload.get("kind") not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}")
    payload = {"format": FORMAT, "version": VERSION, **payload}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise TowerError(
            f"could not write checkpoint {path} ({exc.strerror or exc}): check the folder exists, is writable and has space"
        ) from None
    return path


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def check_writable(path: str | os.PathLike) -> None:
    """Fail before hours of training, not after, when the checkpoint cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise TowerError(f"{path} is a folder: give a file name such as {path / 'model.pt'}")
    probe = path.with_name(f".{path.name}.probe")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
    except OSError as exc:
        raise TowerError(
            f"could not write checkpoint {path} ({exc.strerror or exc}): check the folder exists and is writable"
        ) from None
    finally:
        _remove_quietly(probe)


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint safely; `kind` ("pretrained"/"segmenter") is checked when given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    try:
        # A bioimage.io package written by `napari-tower export` is rebuilt into a checkpoint and checked below.
        data = (_from_bioimageio(path) if _is_bioimageio(path)
                else torch.load(path, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than weights ({str(exc).splitlines()[0][:160]}), "
            "which could run code; only load checkpoints written by napari-tower"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a checkpoint ({type(exc).__name__}): "
            "it may be truncated; use an earlier copy or train again"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a napari-tower checkpoint")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, newer than this napari-tower understands ({VERSION}): "
            "upgrade napari-tower (pip install -U napari-tower)"
        )
    if kind is not None and data.get("kind") != kind:
        have = data.get("kind")
        hint = ("fine-tune it first (napari-tower finetune --init CKPT) to get a segmenter"
                if have == "pretrained" else "give a pretraining checkpoint (napari-tower pretrain) instead")
        raise CheckpointError(f"{path} is a {have} checkpoint, but a {kind} checkpoint is needed here: {hint}")
    return data


def _is_bioimageio(path: Path) -> bool:
    from ..bioimageio_package import is_bioimageio_package

    return is_bioimageio_package(path)


def _from_bioimageio(path: Path) -> dict[str, Any]:
    from ..bioimageio_package import checkpoint_from_bioimageio

    return checkpoint_from_bioimageio(path)
