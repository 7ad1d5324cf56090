"""Resuming a block-wise prediction after a crash: a journal of the blocks already finished.

`predict_blockwise` writes into a partial folder next to its output (`.<out>.partial`) and
moves it into place only when every block is done. The journal lives in that folder
(`.journal/`): a fingerprint of the job (model weights, image, block layout, settings) and one
small file per finished block task, written atomically only after the block's pixels are in
the zarr arrays. When a run is killed (power loss aside: zarr chunks are not fsynced), Ctrl-C'd or
stopped, the next run with the same fingerprint skips the blocks the journal lists; anything
else (another model, image or setting) starts afresh.

Entries are `.npz` files of plain arrays, read with `allow_pickle=False`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes

FOLDER = ".journal"
FINGERPRINT = "fingerprint.json"


def fingerprint(ckpt: Any, image: Any, settings: dict[str, Any]) -> str:
    """A digest of what decides the output: the model's weights, the image (source, shape, file state), settings."""
    digest = hashlib.sha256()
    for name in sorted(ckpt.state):
        tensor = ckpt.state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        try:
            digest.update(tensor.numpy().tobytes())
        except TypeError:  # a dtype numpy lacks (bfloat16)
            digest.update(tensor.float().numpy().tobytes())
    source = Path(str(image.source))
    stat: list[Any] = []
    if source.exists():
        # A zarr folder's own mtime does not change when chunks are rewritten: use its newest entry.
        paths = [source] + (sorted(source.rglob("*"))[:10_000] if source.is_dir() else [])
        stat = [max(p.stat().st_mtime_ns for p in paths), sum(p.stat().st_size for p in paths if p.is_file())]
    described = {"source": str(image.source), "shape": list(image.shape), "dtype": str(image.data.dtype),
                 "file": stat, "settings": settings}
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class BlockJournal:
    """The finished blocks of one partial prediction folder."""

    def __init__(self, partial: Path) -> None:
        self.folder = Path(partial) / FOLDER

    @classmethod
    def reopen(cls, partial: Path, digest: str) -> BlockJournal | None:
        """The journal of an interrupted run of the same job, or None (nothing to resume)."""
        journal = cls(partial)
        try:
            stored = json.loads((journal.folder / FINGERPRINT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return journal if isinstance(stored, dict) and stored.get("digest") == digest else None

    @classmethod
    def create(cls, partial: Path, digest: str) -> BlockJournal:
        """A new, empty journal for a fresh run (written after the output arrays exist)."""
        journal = cls(partial)
        journal.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(journal.folder / FINGERPRINT, json.dumps({"digest": digest}).encode(), "block journal")
        return journal

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.npz"

    def record(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Mark task `name` finished, with what a later pass needs from it."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self._path(name), buffer.getvalue(), "block journal")

    def load(self, name: str, keys: Collection[str] | None = None) -> dict[str, np.ndarray] | None:
        """What `record` stored for task `name` (only `keys`, when given: the others are not read), or None when it
        has not finished (or its entry is unreadable)."""
        path = self._path(name)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in (data.files if keys is None else keys)}
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def members(self, name: str) -> list[str]:
        """The names of the arrays stored for task `name` (none read), or [] when there is no readable entry."""
        try:
            with np.load(self._path(name), allow_pickle=False) as data:
                return list(data.files)
        except (OSError, ValueError, EOFError):
            return []

    def count(self) -> int:
        try:
            return sum(1 for p in os.scandir(self.folder) if p.name.endswith(".npz"))
        except OSError:
            return 0
