"""Model files (`ModelBundle`): round trip, files of the earlier format, atomic writes, refusal of code."""

from __future__ import annotations

import pickle

import pytest
import torch

from napari_tower.data import Normalisation
from napari_tower.errors import CheckpointError, TowerError
from napari_tower.model_bundle import FORMAT, VERSION, ModelBundle


def _bundle(kind="pretrained") -> ModelBundle:
    return ModelBundle(kind=kind, method="tower", config={"a": [1, 2]}, state={"w": torch.arange(6.0)},
                       history={"loss": [1.0, 0.5]}, normalisation=Normalisation([0.0], [1.0]))


def test_round_trip(tmp_path):
    path = _bundle().save(tmp_path / "m.pt")
    data = ModelBundle.load(path, "pretrained")
    assert torch.equal(data.state["w"], torch.arange(6.0))
    assert data.history["loss"] == [1.0, 0.5] and data.method == "tower" and data.normalisation == Normalisation([0.0], [1.0])
    raw = torch.load(path, weights_only=True)  # the on-disk format: a plain dict, format and version first
    assert raw["format"] == FORMAT and raw["version"] == VERSION and raw["kind"] == "pretrained"
    assert not list(tmp_path.glob(".*tmp")), "no temp file is left behind"


# What `pretrain` and `finetune` wrote before the bundle existed: plain dicts saved with torch.save.
_OLD_PRETRAINED = {
    "format": "napari-tower", "version": 1, "kind": "pretrained", "method": "simclr", "transfers": ["encoder"],
    "config": {"method": "simclr", "steps": 5, "model": {"in_channels": 2, "base": 8, "depth": 3},
               "data": {"low_percentile": 2.0, "high_percentile": 99.0}},
    "normalisation": {"low": [0.5, 1.0], "high": [10.0, 20.0]}, "state": {"unet.encoder.w": torch.ones(2, 3)},
    "optimizer": {"state": {0: {"step": torch.tensor(5.0)}}, "param_groups": [{"lr": 0.001, "params": [0]}]},
    "step": 5, "history": {"step": [1.0, 2.0], "loss": [0.9, 0.8]}, "world_size": 1,
}
_OLD_SEGMENTER = {
    "format": "napari-tower", "version": 1, "kind": "segmenter", "target": "instance", "classes": 3,
    "init_method": "tower", "config": {"model": {"in_channels": 1, "base": 8, "depth": 2}},
    "normalisation": {"low": [0.0], "high": [255.0]}, "state": {"head.w": torch.zeros(3)}, "step": 40,
    "history": {"loss": [0.5]}, "best_val_dice": None,
}


@pytest.mark.parametrize("old", [_OLD_PRETRAINED, _OLD_SEGMENTER], ids=["pretrained", "segmenter"])
def test_files_written_by_the_earlier_code_load_and_keep_every_key(tmp_path, old):
    torch.save(old, tmp_path / "old.pt")
    bundle = ModelBundle.load(tmp_path / "old.pt", old["kind"])
    assert bundle.kind == old["kind"] and bundle.config == old["config"] and bundle.step == old["step"]
    assert bundle.normalisation == Normalisation.from_dict(old["normalisation"]) and bundle.history == old["history"]
    assert bundle.in_channels == old["config"]["model"]["in_channels"] and bundle.depth == old["config"]["model"]["depth"]
    if old["kind"] == "pretrained":
        assert (bundle.method, bundle.transfers, bundle.world_size) == ("simclr", ["encoder"], 1)
        assert bundle.optimizer == old["optimizer"] and bundle.percentiles == (2.0, 99.0)
    else:
        assert (bundle.target, bundle.classes, bundle.init_method, bundle.best_val_dice) == ("instance", 3, "tower", None)
        assert bundle.percentiles == (1.0, 99.8)  # no data config: the defaults
    # Written again, the file holds the same information (a None the old code wrote is simply left out).
    bundle.save(tmp_path / "new.pt")
    again = torch.load(tmp_path / "new.pt", weights_only=True)
    assert {k: v for k, v in old.items() if v is not None}.keys() == again.keys()
    for key, value in again.items():
        if key != "state":
            assert value == old[key], key
    assert all(torch.equal(again["state"][k], v) for k, v in old["state"].items())


def test_unknown_keys_survive_a_round_trip(tmp_path):
    torch.save({**_OLD_SEGMENTER, "note": "from a newer minor version"}, tmp_path / "m.pt")
    bundle = ModelBundle.load(tmp_path / "m.pt")
    assert bundle.extra == {"note": "from a newer minor version"}
    assert bundle.to_dict()["note"] == "from a newer minor version"


def test_incomplete_segmenter_is_refused(tmp_path):
    torch.save({k: v for k, v in _OLD_SEGMENTER.items() if k != "classes"}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="incomplete"):
        ModelBundle.load(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="target and classes"):
        ModelBundle(kind="segmenter", config={}, state={})


def test_wrong_kind_names_the_fix(tmp_path):
    _bundle().save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="fine-tune it first"):
        ModelBundle.load(tmp_path / "m.pt", "segmenter")
    with pytest.raises(CheckpointError, match="prediction needs a segmenter"):
        _bundle().require_segmenter()


def test_truncated_and_future_version(tmp_path):
    _bundle().save(tmp_path / "m.pt")
    raw = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        ModelBundle.load(tmp_path / "t.pt")
    future = _bundle().to_dict()
    future["version"] = VERSION + 1
    torch.save(future, tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match="newer"):
        ModelBundle.load(tmp_path / "f.pt")


class _CreatesFile:
    """Unpickling this would create a file: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    payload = {**_bundle().to_dict(), "evil": _CreatesFile(str(marker))}
    with open(tmp_path / "evil.pt", "wb") as fh:
        torch.save(payload, fh, pickle_module=pickle)
    marker.unlink(missing_ok=True)  # torch.save does not run __reduce__'s callable, but be sure
    with pytest.raises(CheckpointError, match="refused"):
        ModelBundle.load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    _bundle().save(tmp_path / "m.pt")
    before = (tmp_path / "m.pt").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(TowerError, match="No space left"):
        _bundle().save(tmp_path / "m.pt")
    assert (tmp_path / "m.pt").read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))
