"""Versions of the corrected labels, one per retrain round, written to disk as they are made.

The correct-and-retrain loop overwrites the labels a user corrected with each new prediction. `LabelHistory`
keeps every round's corrected labels as a numbered, atomically written file (`round-0001.npz`, ...) with an
index, so the user can go back to any earlier round, and a crash loses none of them. Files only, no Qt.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes
from .errors import TowerError

INDEX = "history.json"


@dataclass(frozen=True)
class Version:
    """One saved round: its number, what it was, when, and the labels' layer name and shape."""

    number: int
    note: str
    layer: str
    saved_at: float
    shape: tuple[int, ...]

    def describe(self) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(self.saved_at))
        return f"round {self.number}: {self.note} ({self.layer}, {clock})"


class LabelHistory:
    """Numbered snapshots of labels in `folder` (created on the first save)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._versions: list[Version] = []
        if (self.folder / INDEX).exists():
            try:
                rows = json.loads((self.folder / INDEX).read_text(encoding="utf-8"))
                self._versions = [Version(r["number"], r["note"], r["layer"], r["saved_at"], tuple(r["shape"]))
                                  for r in rows]
            except (OSError, ValueError, KeyError, TypeError):
                self._versions = []  # a damaged index: start a new history rather than fail the widget

    def versions(self) -> list[Version]:
        return list(self._versions)

    def _path(self, number: int) -> Path:
        return self.folder / f"round-{number:04d}.npz"

    def save(self, labels: np.ndarray, note: str, layer: str = "") -> Version:
        """Write `labels` as the next version; returns it."""
        data = np.asarray(labels)
        number = (self._versions[-1].number + 1) if self._versions else 1
        buffer = io.BytesIO()
        np.savez_compressed(buffer, labels=data)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._path(number), buffer.getvalue(), "label history")
        version = Version(number, note, layer, time.time(), tuple(int(n) for n in data.shape))
        self._versions.append(version)
        rows = [{"number": v.number, "note": v.note, "layer": v.layer, "saved_at": v.saved_at, "shape": list(v.shape)}
                for v in self._versions]
        atomic_write_bytes(self.folder / INDEX, json.dumps(rows, indent=1).encode(), "label history index")
        return version

    def load(self, number: int) -> np.ndarray:
        """The labels of version `number`, exactly as saved."""
        if not any(v.number == number for v in self._versions):
            raise TowerError(f"no round {number} in the label history: choose one of "
                             f"{[v.number for v in self._versions] or 'none (retrain first)'}")
        try:
            with np.load(self._path(number)) as f:
                return np.array(f["labels"])
        except (OSError, ValueError, KeyError) as exc:
            raise TowerError(f"round {number} of the label history in {self.folder} cannot be read ({exc}): "
                             "choose another round") from None


__all__ = ["LabelHistory", "Version"]
