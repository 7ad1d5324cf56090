"""One-file checkpoints: weights, config, normalisation, method and history.

Written atomically (`atomic.atomic_write`: exclusive temp file, fsync, rename)
so an interrupted write or a full disk never replaces a good checkpoint with
half a file. Read with
`torch.load(weights_only=True)`, which refuses any pickled object other than
tensors and plain containers, so a checkpoint can never run code on load.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write, os_error_advice
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
    # Serialised in memory first: torch's writer turns a failed file write (disk full) into an opaque
    # RuntimeError, while a plain write of the bytes reports the real reason.
    with atomic_write(path, "checkpoint") as fh:
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        fh.write(buffer.getbuffer())
    return path


def check_writable(path: str | os.PathLike) -> None:
    """Fail before hours of training, not after, when the checkpoint cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise TowerError(f"{path} is a folder: give a file name such as {path / 'model.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    except OSError as exc:
        raise TowerError(f"could not write checkpoint {path} ({os_error_advice(exc)})") from None
    os.close(fd)
    os.unlink(probe)


def _refusal_reason(exc: Exception, path: Path) -> str | None:
    """What torch's weights-only unpickler refused, or None when the file is no pickle at all (just damaged)."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if found:
        return f"a reference to {found.group(1)}"
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head[:1] == b"\x80" or head == b"PK":  # a pickle (protocol 2+) or torch's zip container
        return "pickle instructions napari-tower never writes"
    return None


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint safely; `kind` ("pretrained"/"segmenter") is checked when given.

    Only tensors and plain containers are unpickled (`weights_only=True`): a file
    that would build any other object, which is how a pickle runs code, is refused
    before that object is created.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; the refusal below says enough
            warnings.simplefilter("ignore")
            # A bioimage.io package written by `napari-tower export` is rebuilt into a checkpoint and checked below.
            data = (_from_bioimageio(path) if _is_bioimageio(path)
                    else torch.load(path, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as exc:
        reason = _refusal_reason(exc, path)
        if reason is None:
            raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint: use an earlier copy or "
                                  "train again") from None
        raise CheckpointError(
            f"checkpoint {path} was refused: besides weights it holds {reason}, which could run code when loaded; "
            "only load checkpoints written by napari-tower, from a source you trust"
        ) from None
    except PermissionError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.strerror}): check the file's permissions") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a checkpoint ({type(exc).__name__}): "
            "it may be truncated; use an earlier copy or train again"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a napari-tower checkpoint: give a file written by napari-tower")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"checkpoint {path} has no valid format version ({version!r}): it is damaged; "
                              "use an earlier copy or train again")
    if version > VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, newer than this napari-tower understands ({VERSION}): "
            "upgrade napari-tower (pip install -U napari-tower)"
        )
    have = data.get("kind")
    if have not in KINDS or not isinstance(data.get("config"), dict) or not isinstance(data.get("state"), dict):
        raise CheckpointError(f"checkpoint {path} is incomplete (kind {have!r}, config or weights missing): "
                              "use an earlier copy or train again")
    if kind is not None and have != kind:
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
