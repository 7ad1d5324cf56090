"""Shared fixtures: small synthetic microscopy-like images and the real data in ../shared when present."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(os.environ.get("NAPARI_TOWER_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
ISBI = SHARED / "isbi2012_em"
DSB = SHARED / "dsb2018"

torch.set_num_threads(2)


def blobs(shape=(128, 128), n=12, seed=0, radius=(5, 11)) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like image of round nuclei and its instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        r = rng.integers(*radius)
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = i
    image = (labels > 0) * 0.7 + 0.1 + rng.normal(0, 0.05, shape)
    return (image * 1000).astype(np.uint16), labels


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    """Remembered settings and autosaves go to a temporary folder, never the user's."""
    monkeypatch.setenv("NAPARI_TOWER_CONFIG_DIR", str(tmp_path / "config"))


def _capture_notifications(monkeypatch, kind: str) -> list[str]:
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, f"show_{kind}", shown.append)
    return shown


@pytest.fixture
def errors(monkeypatch):
    """Messages the widget shows as error notifications."""
    return _capture_notifications(monkeypatch, "error")


@pytest.fixture
def warnings_shown(monkeypatch):
    """Messages the widget shows as warning notifications."""
    return _capture_notifications(monkeypatch, "warning")


@pytest.fixture
def run_main(capsys):
    """`napari-tower ARGS...` in this process, as a `CompletedProcess` (a real process costs seconds of imports
    each; tests/cli/test_cli.py::test_pretrain_1d_array runs one)."""
    from napari_tower.cli import main

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess([str(a) for a in args], code, out.out, out.err)

    return run


@pytest.fixture
def blob_image():
    return blobs()


@pytest.fixture
def isbi_volume():
    path = ISBI / "train-volume.tif"
    if not path.exists():
        pytest.skip("../shared/data/isbi2012_em is absent")
    return path


@pytest.fixture
def isbi_labels():
    path = ISBI / "train-labels.tif"
    if not path.exists():
        pytest.skip("../shared/data/isbi2012_em is absent")
    return path


# Tiny models trained once per session and shared (read-only) by every test that only needs "a model".
@pytest.fixture(scope="session")
def tiny_segmenter():
    """A binary segmenter (base 4) fine-tuned for 3 steps on the blobs: fast, not accurate."""
    from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig
    from napari_tower.data import from_array
    from napari_tower.segment import finetune

    image, truth = blobs((64, 64), seed=5)
    cfg = FinetuneConfig(steps=3, batch=2, device="cpu", data=DataConfig(patch=32), model=ModelConfig(base=4))
    return finetune([from_array(image)], [(truth > 0)[None].astype(np.int64)], cfg).checkpoint


@pytest.fixture(scope="session")
def tiny_instance_model_file(tmp_path_factory):
    """A boundary-head instance segmenter (base 8, depth 2) fine-tuned for 4 steps on synthetic nuclei, as a file
    (the watershed path every model before issue 20 takes; shape heads have their own tests)."""
    from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig
    from napari_tower.data import from_array
    from napari_tower.samples import synthetic_nuclei
    from napari_tower.segment import finetune

    folder = tmp_path_factory.mktemp("model")
    image, labels = synthetic_nuclei((128, 128), 20, seed=1)
    cfg = FinetuneConfig(steps=4, batch=2, device="cpu", instance_head="boundary", data=DataConfig(patch=64),
                         model=ModelConfig(base=8, depth=2))
    finetune([from_array(image, "nuclei")], [labels[None]], cfg, folder / "model.pt")
    return folder / "model.pt"
