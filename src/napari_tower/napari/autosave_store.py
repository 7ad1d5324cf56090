"""The files of the widget's autosave, without Qt: one session folder per widget, and which are live.

`AutosaveStore` writes and reads one session folder (crash-consistent: see its docstring);
`SessionLock` marks a folder as in use by a live widget of any napari process;
`previous_session` and `prune_sessions` look at the other folders. `autosave.py` decides
when to save and shows the restore bar.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TowerError
from .settings import config_dir

log = logging.getLogger(__name__)

AUTOSAVE_DIR = "autosave"
MANIFEST = "session.json"
INTERVAL_S = 60.0
KEEP_SESSIONS = 5  # older session folders are removed when a widget opens
MAX_AGE_S = 14 * 24 * 3600
MODEL_KINDS = ("segmenter", "pretrained")

# Session folders written by widgets of this process: never offered for restore, never pruned.
_LIVE: set[Path] = set()
_SESSION_NUMBERS = itertools.count()


def autosave_root() -> Path:
    return config_dir() / AUTOSAVE_DIR


@dataclass
class LabelsEntry:
    """One Labels layer in a snapshot; `data` is None when the file already saved is still current."""

    key: str  # file stem, stable for the layer's life
    name: str
    scale: list[float]
    translate: list[float]
    owned: str | None
    data: np.ndarray | None = None
    # The prediction it was corrected from, so Retrain from corrections still works after a restore.
    written: np.ndarray | None = None
    planes: list[int] = field(default_factory=list)
    target: str | None = None
    image_name: str | None = None


@dataclass
class Snapshot:
    """What one autosave writes: Labels layers and models (None: unchanged since the last save)."""

    labels: list[LabelsEntry]
    models: dict[str, dict[str, Any] | None]
    model_kinds: list[str]  # kinds present, changed or not


@dataclass
class Restored:
    """A session read back: layer entries with their arrays, models, and when it was saved."""

    folder: Path
    saved_at: float
    labels: list[LabelsEntry]
    models: dict[str, dict[str, Any]]


class AutosaveStore:
    """One session folder: each save writes new files under new names, then the manifest that names them.

    A file is never rewritten in place: a changed layer or model goes to a new name (`labels-0.<token>-3.tif`,
    `segmenter.<token>-3.pt`), the manifest is replaced atomically last, and only then are files no manifest
    names any more removed. A crash at any moment (even SIGKILL, or power loss) therefore leaves the
    previous save or the new one, complete and consistent, never a mix of the two.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: dict[str, str] = {}  # "<key>", "<key>.prediction", "<kind>" -> file name now in the manifest
        self._generation = 0
        # Names never repeat, even for another store writing this folder later (a restarted process): a
        # file the current manifest names is never overwritten.
        self._token = uuid.uuid4().hex[:8]
        self._lock: SessionLock | None = None

    @classmethod
    def new_session(cls) -> AutosaveStore:
        """A folder of its own for a new widget: time, process and a counter keep it unique."""
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        while True:
            folder = autosave_root() / f"{stamp}-{next(_SESSION_NUMBERS)}"
            if not folder.exists() and folder not in _LIVE:
                return cls(folder)

    def _name(self, stem: str, suffix: str) -> str:
        return f"{stem}.{self._token}-{self._generation}{suffix}"

    def write(self, snap: Snapshot) -> None:
        """Write the changed parts of `snap` under new names, then the manifest; then drop what it no longer names."""
        from ..atomic import atomic_write_bytes, remove_stale_temporaries
        from ..data import write_tiff

        self.folder.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = SessionLock.hold(self.folder)  # other napari processes leave a live session alone
        self._generation += 1
        files = dict(self._files)
        layers = []
        for entry in snap.labels:
            if entry.data is not None:
                files[entry.key] = self._name(entry.key, ".tif")
                write_tiff(self.folder / files[entry.key], entry.data)
                files.pop(f"{entry.key}.prediction", None)
                if entry.written is not None:
                    files[f"{entry.key}.prediction"] = self._name(f"{entry.key}.prediction", ".tif")
                    write_tiff(self.folder / files[f"{entry.key}.prediction"], entry.written)
            if entry.key not in files:  # its earlier write failed: the rewrite after the failure brings it back
                continue
            prediction = files.get(f"{entry.key}.prediction")
            layers.append({"key": entry.key, "name": entry.name, "scale": entry.scale, "translate": entry.translate,
                           "owned": entry.owned, "planes": entry.planes, "target": entry.target,
                           "image_name": entry.image_name, "file": files[entry.key],
                           "has_prediction": prediction is not None, "prediction_file": prediction})
        for kind, ckpt in snap.models.items():
            if ckpt is not None:
                files[kind] = self._name(kind, ".pt")
                ckpt.save(self.folder / files[kind])
        manifest = {"version": 2, "saved_at": time.time(), "pid": os.getpid(), "labels": layers,
                    "models": list(snap.model_kinds), "model_files": {k: files[k] for k in snap.model_kinds}}
        atomic_write_bytes(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode(), "autosave manifest")
        keep = {e["file"] for e in layers} | {e["prediction_file"] for e in layers if e["prediction_file"]}
        keep |= set(manifest["model_files"].values()) | {MANIFEST, SessionLock.NAME}
        self._files = {k: v for k, v in files.items() if v in keep}
        for path in self.folder.iterdir():
            if path.name not in keep and not path.name.startswith("."):
                path.unlink(missing_ok=True)
        remove_stale_temporaries(self.folder)  # of a killed earlier writer of this folder

    def release(self) -> None:
        """Let other processes offer (and prune) this session: the widget that wrote it is gone."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def read(self) -> Restored:
        """The session's layers (with arrays) and models; damaged parts are skipped, not fatal."""
        import tifffile

        from ..model_bundle import ModelBundle

        try:
            manifest = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TowerError(f"the autosave in {self.folder} cannot be read ({exc}): discard it") from None
        labels = []
        for item in manifest.get("labels", []):
            try:
                entry = LabelsEntry(str(item["key"]), str(item["name"]), list(item["scale"]),
                                    list(item["translate"]), item.get("owned"),
                                    planes=[int(p) for p in item.get("planes") or []], target=item.get("target"),
                                    image_name=item.get("image_name"))
                # Version 1 manifests named files by key alone.
                entry.data = tifffile.imread(self.folder / str(item.get("file") or f"{entry.key}.tif"))
                if item.get("has_prediction"):
                    name = item.get("prediction_file") or f"{entry.key}.prediction.tif"
                    entry.written = tifffile.imread(self.folder / str(name))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping a damaged autosaved layer in %s: %s", self.folder, exc)
                continue
            labels.append(entry)
        models = {}
        model_files = manifest.get("model_files") or {}
        for kind in manifest.get("models", []):
            if kind not in MODEL_KINDS:
                continue
            try:
                models[kind] = ModelBundle.load(self.folder / str(model_files.get(kind) or f"{kind}.pt"), kind)
            except TowerError as exc:
                log.warning("skipping an autosaved model: %s", exc)
        return Restored(self.folder, float(manifest.get("saved_at", 0.0)), labels, models)

    def summary(self) -> dict[str, Any] | None:
        """The manifest, or None when the folder holds no complete autosave."""
        try:
            data = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and (data.get("labels") or data.get("models")) else None

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class SessionLock:
    """An advisory lock on a session folder, held while its widget lives (by any napari process).

    Two napari windows (two processes) share the autosave folder: neither may offer, restore or
    prune the other's live session. The kernel drops the lock when its process ends, even by a
    crash, so a dead session is offered on the next start. Without `fcntl` (Windows) the owner's
    process id in the manifest decides.
    """

    NAME = ".lock"

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    @classmethod
    def hold(cls, folder: Path) -> SessionLock:
        try:
            import fcntl
        except ImportError:
            return cls(None)
        fd = os.open(folder / cls.NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise TowerError(f"the autosave folder {folder} is in use by another napari") from None
        return cls(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    @classmethod
    def held(cls, folder: Path) -> bool:
        """Whether a live widget (of any process) is writing `folder`."""
        try:
            import fcntl
        except ImportError:
            return _manifest_pid_alive(folder)
        try:
            fd = os.open(folder / cls.NAME, os.O_RDONLY)
        except OSError:
            return False  # never locked: an old-style session, or one being created this instant
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # also drops the probe's own lock
        return False


def _manifest_pid_alive(folder: Path) -> bool:
    try:
        pid = int(json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("pid", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        import psutil

        return bool(psutil.pid_exists(pid))
    except ImportError:
        return False


def previous_session() -> AutosaveStore | None:
    """The newest session with saved work that no widget of this process is writing, if any."""
    root = autosave_root()
    if not root.is_dir():
        return None
    folders = sorted((p for p in root.iterdir() if p.is_dir() and p not in _LIVE and not SessionLock.held(p)),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in folders:
        store = AutosaveStore(folder)
        if store.summary() is not None:
            return store
    return None


def prune_sessions(keep: int = KEEP_SESSIONS, max_age_s: float = MAX_AGE_S) -> None:
    """Remove session folders beyond the newest `keep` ones, and those older than `max_age_s`."""
    root = autosave_root()
    if not root.is_dir():
        return
    folders = sorted((p for p in root.iterdir() if p.is_dir() and p not in _LIVE and not SessionLock.held(p)),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    now = time.time()
    for rank, folder in enumerate(folders):
        if rank >= keep or now - folder.stat().st_mtime > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
