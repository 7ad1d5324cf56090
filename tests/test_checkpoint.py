"""Checkpoints: round trip, atomic writes, and refusal of anything that could run code."""

from __future__ import annotations

import pickle

import pytest
import torch

from napari_tower.errors import CheckpointError
from napari_tower.train.checkpoint import VERSION, load_checkpoint, save_checkpoint


def _payload(kind="pretrained"):
    return {"kind": kind, "method": "tower", "config": {"a": [1, 2]}, "state": {"w": torch.arange(6.0)},
            "history": {"loss": [1.0, 0.5]}, "normalisation": {"low": [0.0], "high": [1.0]}}


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _payload())
    data = load_checkpoint(path, "pretrained")
    assert torch.equal(data["state"]["w"], torch.arange(6.0))
    assert data["history"]["loss"] == [1.0, 0.5] and data["version"] == VERSION
    assert not list(tmp_path.glob(".*tmp")), "no temp file is left behind"


def test_wrong_kind_names_the_fix(tmp_path):
    save_checkpoint(tmp_path / "m.pt", _payload())
    with pytest.raises(CheckpointError, match="fine-tune it first"):
        load_checkpoint(tmp_path / "m.pt", "segmenter")


def test_truncated_and_future_version(tmp_path):
    save_checkpoint(tmp_path / "m.pt", _payload())
    raw = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "t.pt")
    future = _payload()
    torch.save({"format": "napari-tower", "version": VERSION + 1, **future}, tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "f.pt")


class _CreatesFile:
    """Unpickling this would create a file: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    payload = {"format": "napari-tower", "version": VERSION, **_payload(), "evil": _CreatesFile(str(marker))}
    with open(tmp_path / "evil.pt", "wb") as fh:
        torch.save(payload, fh, pickle_module=pickle)
    marker.unlink(missing_ok=True)  # torch.save does not run __reduce__'s callable, but be sure
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "m.pt", _payload())
    before = (tmp_path / "m.pt").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    from napari_tower.errors import TowerError

    with pytest.raises(TowerError, match="No space left"):
        save_checkpoint(tmp_path / "m.pt", _payload())
    assert (tmp_path / "m.pt").read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))
