"""bioimage.io packages: a fine-tuned model exported, validated and run by bioimageio.core
to napari-tower's own output, then loaded back for prediction and fine-tuning.

Offline: bioimage.io's cache goes to a temporary folder and every socket connection is
refused while these tests run, so nothing can be downloaded.
"""

from __future__ import annotations

import json
import socket
import zipfile

import numpy as np
import pytest
import tifffile
import torch

pytest.importorskip("bioimageio.core")

from napari_tower.bioimageio.exporter import (
    BioimageioExportConfig,
    check_bioimageio_package,
    export_bioimageio,
)
from napari_tower.bioimageio.reader import is_bioimageio_package
from napari_tower.cli import main
from napari_tower.config import DataConfig, ModelConfig, PredictConfig
from napari_tower.data import from_array
from napari_tower.model_bundle import ModelBundle
from napari_tower.samples import synthetic_nuclei
from napari_tower.segment import Predictor


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """bioimage.io's cache in a temporary folder; any attempt to open a network connection fails the test."""
    import bioimageio.spec

    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(tmp_path / "bioimageio-cache"))
    monkeypatch.setattr(bioimageio.spec.settings, "cache_path", tmp_path / "bioimageio-cache")
    attempts: list[object] = []

    def refuse(self, address, *args):  # noqa: ANN001
        attempts.append(address)
        raise OSError(f"network access attempted in an offline test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield
    assert not attempts, f"tried to reach the network: {attempts}"


@pytest.fixture
def model_file(tiny_instance_model_file):
    """A small instance segmenter fine-tuned on the synthetic nuclei (a few steps: fast, not accurate)."""
    return tiny_instance_model_file


def _read_npy(package, name: str) -> np.ndarray:
    import io

    with zipfile.ZipFile(package) as zf:
        return np.load(io.BytesIO(zf.read(name)))


def _our_probabilities(ckpt, image: np.ndarray, normalise: str) -> np.ndarray:
    side = max(image.shape[-2:])
    cfg = PredictConfig(device="cpu", tile=max(32, -(-side // 16) * 16), overlap=0, normalise=normalise)
    if hasattr(cfg, "precision"):
        cfg.precision = "float32"
    return Predictor(ckpt, cfg).predict(from_array(image, "test")).probabilities[0]


def test_exported_model_validates_and_reproduces_our_prediction(model_file, tmp_path):
    from bioimageio.core import create_prediction_pipeline, load_model_description, predict

    test_image, _ = synthetic_nuclei((200, 170), 25, seed=7)
    out = export_bioimageio(model_file, tmp_path / "nuclei.zip",
                            BioimageioExportConfig(name="test nuclei", authors=["A. Tester"]), test_image)
    assert is_bioimageio_package(out) and not is_bioimageio_package(model_file)
    with zipfile.ZipFile(out) as zf:
        assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "test_input.npy", "test_output.npy", "cover.png",
                "README.md", "sample_input.tif", "sample_output.tif"} <= set(zf.namelist())

    # bioimage.io's own test: the description validates, both weight formats reproduce the test output.
    report = check_bioimageio_package(out)
    assert report.passed, report.errors

    # The packaged test output is the model's own prediction of the packaged test input.
    ckpt = ModelBundle.load(model_file)
    test_input, test_output = _read_npy(out, "test_input.npy"), _read_npy(out, "test_output.npy")
    assert test_input.shape == (1, 1, 192, 160)  # a centred crop, sides multiples of 16
    assert np.array_equal(test_input[0, 0], test_image[4:196, 5:165].astype(np.float32))
    ours = _our_probabilities(ckpt, test_input[0, 0], "image")
    np.testing.assert_allclose(test_output[0], ours, atol=1e-6)
    assert test_output.shape == (1, 3, 192, 160)

    # bioimageio.core runs the package on an image it has not seen to the same probabilities as napari-tower.
    other, _ = synthetic_nuclei((96, 128), 12, seed=11)
    descr = load_model_description(out)
    for weights in ("torchscript", "pytorch_state_dict"):
        pipeline = create_prediction_pipeline(descr, weight_format=weights, devices=["cpu"])
        sample = predict(model=pipeline, inputs=other.astype(np.float32)[None, None])
        theirs = sample.members["probabilities"].data.to_numpy()[0]
        np.testing.assert_allclose(theirs, _our_probabilities(ckpt, other, "image"), atol=2e-4)


def test_the_default_capped_head_exports_its_maps_and_post_processing(tmp_path):
    """A model with the default 2D instance head (capped distance): the package validates, its outputs are that
    head's activated maps as napari-tower computes them, and its README says how they become objects."""
    from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig
    from napari_tower.segment import finetune

    image, labels = synthetic_nuclei((128, 128), 20, seed=1)
    cfg = FinetuneConfig(steps=4, batch=2, device="cpu", data=DataConfig(patch=64), model=ModelConfig(base=8, depth=2))
    finetune([from_array(image, "nuclei")], [labels[None]], cfg, tmp_path / "capped.pt")
    ckpt = ModelBundle.load(tmp_path / "capped.pt")
    assert ckpt.instance_head == "capped"
    test_image, _ = synthetic_nuclei((160, 160), 20, seed=7)
    out = export_bioimageio(tmp_path / "capped.pt", tmp_path / "capped.zip",
                            BioimageioExportConfig(name="capped nuclei", authors=["A. Tester"]), test_image)
    report = check_bioimageio_package(out)
    assert report.passed, report.errors
    test_input, test_output = _read_npy(out, "test_input.npy"), _read_npy(out, "test_output.npy")
    assert test_output.shape == (1, 3, 160, 160)
    np.testing.assert_allclose(test_output[0], _our_probabilities(ckpt, test_input[0, 0], "image"), atol=1e-6)
    with zipfile.ZipFile(out) as zf:
        readme = zf.read("README.md").decode()
    assert "capped at 1" in readme and "watershed" in readme and "seed threshold" in readme


def test_fixed_normalisation_is_reproduced_exactly(model_file, tmp_path):
    from bioimageio.core import load_model_description, predict

    out = export_bioimageio(model_file, tmp_path / "fixed.zip",
                            BioimageioExportConfig(normalise="model", weight_formats=("torchscript",)))
    ckpt = ModelBundle.load(model_file)
    other, _ = synthetic_nuclei((64, 96), 8, seed=5)
    sample = predict(model=load_model_description(out), inputs=other.astype(np.float32)[None, None])
    theirs = sample.members["probabilities"].data.to_numpy()[0]
    np.testing.assert_allclose(theirs, _our_probabilities(ckpt, other, "model"), atol=1e-5)
    import yaml

    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    steps = [step for step in rdf["inputs"][0]["preprocessing"] if step["id"] != "ensure_dtype"]
    assert [step["id"] for step in steps] == ["scale_linear", "clip"]
    scale, clip = steps
    assert (clip["kwargs"]["min"], clip["kwargs"]["max"]) == (0.0, 1.0)
    low, high = ckpt.normalisation.low[0], ckpt.normalisation.high[0]
    assert scale["kwargs"]["gain"] == pytest.approx(1 / (high - low)) and scale["kwargs"]["offset"] == pytest.approx(
        -low / (high - low))
    assert list(rdf["weights"]) == ["torchscript"]


def test_package_loads_back_for_predict_and_finetune(model_file, tmp_path, capsys):
    package = export_bioimageio(model_file, tmp_path / "model.zip", BioimageioExportConfig())
    ckpt, loaded = ModelBundle.load(model_file), ModelBundle.load(package, kind="segmenter")
    # YAML has no tuples: compare the config as plain JSON values.
    assert _plain(loaded.config) == _plain(ckpt.config) and loaded.target == ckpt.target
    assert all(torch.equal(loaded.state[k], v) for k, v in ckpt.state.items())

    image, labels = synthetic_nuclei((96, 96), 10, seed=2)
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    assert main(["predict", str(package), str(tmp_path / "image.tif"), "--out", str(tmp_path / "from_zip"),
                 "--quiet", "--device", "cpu"]) == 0
    assert main(["predict", str(model_file), str(tmp_path / "image.tif"), "--out", str(tmp_path / "from_pt"),
                 "--quiet", "--device", "cpu"]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "from_zip" / "image.tif"),
                          tifffile.imread(tmp_path / "from_pt" / "image.tif"))

    assert main(["finetune", str(tmp_path / "image.tif"), "--labels", str(tmp_path / "labels.tif"), "--init",
                 str(package), "--out", str(tmp_path / "more.pt"), "--steps", "2", "--batch", "2", "--patch", "64",
                 "--device", "cpu", "--quiet"]) == 0
    more = ModelBundle.load(tmp_path / "more.pt", kind="segmenter")
    assert more.config["model"] == ckpt.config["model"] and more.target == ckpt.target


def test_cli_export_checks_the_package(model_file, tmp_path, capsys):
    out = tmp_path / "cli.zip"
    assert main(["export", str(model_file), "--bioimageio", str(out), "--weights", "torchscript",
                 "--author", "A. Tester", "--name", "cli test"]) == 0
    assert "bioimage.io's test passed" in capsys.readouterr().err
    from bioimageio.spec import load_model_description

    descr = load_model_description(out, perform_io_checks=False)
    assert descr.name == "cli test" and [a.name for a in descr.authors] == ["A. Tester"]


def test_bad_exports_and_foreign_packages_get_clear_messages(model_file, tmp_path, capsys):
    from napari_tower.config import PretrainConfig
    from napari_tower.train import pretrain

    image, _ = synthetic_nuclei((64, 64), 5)
    pretrain([from_array(image, "x")], PretrainConfig(steps=1, batch=2, device="cpu", data=DataConfig(patch=32),
                                                      model=ModelConfig(base=4, depth=2)), tmp_path / "tower.pt")
    cases = [
        (["export", str(tmp_path / "tower.pt"), "--bioimageio", str(tmp_path / "a.zip")], "fine-tune it first"),
        (["export", str(model_file), "--bioimageio", str(tmp_path / "a.pt")], "not a .zip name"),
        (["export", str(model_file), "--bioimageio", str(tmp_path / "a.zip"), "--weights", "onnx"], "not supported"),
        (["export", str(model_file), "--bioimageio", str(tmp_path / "a.zip"), "--test-image",
          str(tmp_path / "missing.tif")], "missing.tif"),
    ]
    from ..core.volumes import tiny_segmenter_3d

    tiny_segmenter_3d(2).save(tmp_path / "volume.pt")
    cases.append((["export", str(tmp_path / "volume.pt"), "--bioimageio", str(tmp_path / "a.zip")],
                  "3D (volume) model: bioimage.io export writes 2D models only"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert not (tmp_path / "a.zip").exists()

    # A bioimage.io model from elsewhere (no napari-tower metadata) is refused with advice, not a traceback.
    package = export_bioimageio(model_file, tmp_path / "ours.zip", BioimageioExportConfig(weight_formats=("torchscript",)))
    import yaml

    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "rdf.yaml":
                rdf = yaml.safe_load(data)
                rdf.pop("config")
                data = yaml.safe_dump(rdf).encode()
            dst.writestr(item, data)
    assert main(["predict", str(foreign), str(tmp_path / "tower.pt"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "not one napari-tower exported" in err and "bioimageio predict" in err


@pytest.mark.gui
def test_widget_exports_a_package_and_loads_it_back(model_file, make_napari_viewer, qtbot, tmp_path):
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    from napari_tower.device import device_report

    from ..widget.test_widget import open_widget, wait_idle

    viewer, widget = open_widget(make_napari_viewer)
    assert widget.models.doctor.text() == device_report().text()  # the device doctor
    assert widget.load_model(model_file) == "segmenter"
    image, _ = synthetic_nuclei((112, 96), 10, seed=4)
    viewer.add_image(image, name="cells")
    widget.export_bioimageio(tmp_path / "cells.zip")
    assert widget.busy and not widget.models.export_button.isEnabled()
    wait_idle(qtbot, widget, 300)
    assert "bioimage.io's test passed" in widget.status.text(), widget.status.text()
    assert np.array_equal(_read_npy(tmp_path / "cells.zip", "test_input.npy")[0, 0], image.astype(np.float32))

    exported = widget.session.segmenter
    widget.session.segmenter = None
    assert widget.load_model(tmp_path / "cells.zip") == "segmenter"
    assert all(torch.equal(widget.session.segmenter.state[k], v) for k, v in exported.state.items())
    assert "segmenter: instance" in widget.models.info.text()


def _plain(value):
    return json.loads(json.dumps(value))
