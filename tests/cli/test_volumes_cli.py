"""--dims, --voxel-size and --patch-z on the command line (issue 17): what is chosen, what is saved, what is refused."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_tower.cli import build_parser, main
from napari_tower.config import FinetuneConfig, ModelConfig, to_dict
from napari_tower.data.voxels import MIN_VOLUME_SLICES
from napari_tower.model_bundle import ModelBundle

from ..conftest import blobs

# Small enough for a CPU in seconds, in 2D and in 3D (a 3D run pools z at most twice: 8 slices suffice).
TINY = ["--steps", "1", "--batch", "2", "--patch", "32", "--patch-z", "8", "--base", "4", "--depth", "2",
        "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("volumes")
    stack = np.stack([blobs((48, 48), 6, seed=s)[0] for s in range(12)])
    tifffile.imwrite(d / "volume.tif", stack, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})  # z 2 um, pixels 0.5 um: ratio 4
    tifffile.imwrite(d / "plain_stack.tif", stack)  # no metadata
    tifffile.imwrite(d / "thin.tif", stack[:MIN_VOLUME_SLICES - 1])
    tifffile.imwrite(d / "plane.tif", stack[0])
    return d


def _model(path) -> dict:
    return ModelBundle.load(path).config["model"]


@pytest.mark.parametrize("argv,expected", [
    (["--voxel-size", "4", "1", "1"], ["4", "1", "1"]),
    (["--voxel-size", "4,1,1"], ["4,1,1"]),
    ([], None),
])
def test_options_parse(argv, expected):
    for command in ("pretrain", "finetune", "predict"):
        head = {"pretrain": ["pretrain", "a.tif", "--out", "o"], "finetune": ["finetune", "a.tif", "--labels", "l",
                "--out", "o"], "predict": ["predict", "m.pt", "a.tif", "--out", "o"]}[command]
        args = build_parser().parse_args([*head, *argv])
        assert args.voxel_size == expected and args.dims == "auto"
    assert build_parser().parse_args(["pretrain", "a", "--out", "o", "--patch-z", "12"]).patch_z == 12


def test_auto_picks_3d_for_a_volume_with_the_files_voxel_size(files, tmp_path, capsys):
    out = tmp_path / "p.pt"
    assert main(["pretrain", str(files / "volume.tif"), "--out", str(out), *TINY[:-1]]) == 0
    model = _model(out)
    assert model["dims"] == "3d" and tuple(model["voxel_size"]) == pytest.approx((2.0, 0.5, 0.5))
    assert ModelBundle.load(out).config["data"]["patch_z"] == 8
    err = capsys.readouterr().err
    assert "3D volumes" in err and "12 slices along Z" in err and "from ImageJ metadata" in err


def test_given_voxel_size_wins_and_missing_metadata_is_said(files, tmp_path, capsys):
    out = tmp_path / "p.pt"
    assert main(["pretrain", str(files / "plain_stack.tif"), "--out", str(out), *TINY[:-1]]) == 0
    assert tuple(_model(out)["voxel_size"]) == (1.0, 1.0, 1.0)
    assert "assumed isotropic" in capsys.readouterr().err
    assert main(["pretrain", str(files / "volume.tif"), "--out", str(out), *TINY[:-1], "--voxel-size", "5,1,1"]) == 0
    assert tuple(_model(out)["voxel_size"]) == (5.0, 1.0, 1.0)
    assert "from --voxel-size" in capsys.readouterr().err


def test_2d_stays_2d(files, tmp_path):
    for name, extra in (("plane.tif", []), ("thin.tif", []), ("volume.tif", ["--dims", "2d"])):
        out = tmp_path / f"{name}.pt"
        assert main(["pretrain", str(files / name), "--out", str(out), *TINY, *extra]) == 0, name
        assert _model(out)["dims"] == "2d", name


@pytest.mark.parametrize("argv,words", [
    (["pretrain", "{plane}", "--out", "{out}", "--dims", "3d"], "holds no volume"),
    (["pretrain", "{volume}", "--out", "{out}", "--voxel-size", "4", "1"], "3 numbers"),
    (["pretrain", "{volume}", "--out", "{out}", "--voxel-size", "4,0,1"], "positive"),
    (["pretrain", "{volume}", "{plane}", "--out", "{out}"], "plane.tif holds no volume"),
    (["finetune", "{volume}", "--labels", "{volume}", "--out", "{out}", "--patch-z", "0"], "3D patch depth 0"),
])
def test_refusals_are_one_error_line(files, tmp_path, capsys, argv, words):
    names = {"plane": files / "plane.tif", "volume": files / "volume.tif", "out": tmp_path / "o.pt"}
    argv = [a.format(**names) for a in argv]
    argv = [*argv[:argv.index("--out") + 2], *TINY, *argv[argv.index("--out") + 2:]]  # the case's options win
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory):
    """A 3D segmenter checkpoint (untrained weights: prediction quality is not the point here)."""
    from napari_tower.segment.model import Segmenter

    cfg = FinetuneConfig(model=ModelConfig(base=4, depth=2, dims="3d", voxel_size=(4.0, 1.0, 1.0)))
    net = Segmenter(1, 2, base=4, depth=2, spatial_dims=3, pools=cfg.model.pools(cfg.data.patch_z),
                    kernels=cfg.model.kernels(cfg.data.patch_z))
    path = tmp_path_factory.mktemp("m3d") / "m3d.pt"
    ModelBundle("segmenter", to_dict(cfg), net.state_dict(), target="binary", classes=2).save(path)
    return path


def test_a_3d_model_refuses_a_plane_and_a_wrong_dims(files, model_3d, tmp_path, capsys):
    assert main(["predict", str(model_3d), str(files / "plane.tif"), "--out", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "is a 3D model but" in err and "holds no volume" in err
    assert main(["predict", str(model_3d), str(files / "volume.tif"), "--out", str(tmp_path), "--dims", "2d"]) == 2
    assert "is a 3D model: the model decides" in capsys.readouterr().err


def test_predict_notes_a_voxel_size_unlike_the_models(files, model_3d):
    from napari_tower.cli.volumes import check_model_fits
    from napari_tower.data import read_image

    args = build_parser().parse_args(["predict", str(model_3d), "x", "--out", "o"])
    config = ModelBundle.load(model_3d).config
    volume = read_image(files / "volume.tif")  # ratio 4, as the model learnt: no note
    assert check_model_fits(config, volume, args) == ""
    args.voxel_size = ["1", "1", "1"]
    assert "resample" in check_model_fits(config, volume, args)
    args_2d = build_parser().parse_args(["predict", "m", "x", "--out", "o"])
    assert "planes one by one" in check_model_fits({"model": {"dims": "2d"}}, volume, args_2d)


def test_a_3d_finetune_takes_the_3d_cpu_defaults_unless_given(files, tmp_path, capsys):
    stack = tifffile.imread(files / "volume.tif")
    labels = np.zeros(stack.shape, np.uint8)
    labels[6] = 1 + (stack[6] > np.median(stack[6]))  # one painted slice: 1 = background, 2 = class
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    out = tmp_path / "f.pt"
    argv = ["finetune", str(files / "volume.tif"), "--labels", str(tmp_path / "labels.tif"), "--out", str(out),
            "--steps", "1", "--base", "4", "--depth", "2", "--device", "cpu", "--target", "sparse"]

    def used() -> tuple[int, int, int]:
        saved = ModelBundle.load(out).config
        return saved["data"]["patch"], saved["data"]["patch_z"], saved["batch"]

    assert main([*argv, "--dims", "3d"]) == 0
    assert used() == (128, 4, 2)  # FINETUNE_3D, saved with the model
    assert ("3D fine-tuning defaults for a CPU: 4 slices per patch, batch 2 (set --patch-z, --batch to change)"
            in capsys.readouterr().err)
    assert main([*argv, "--dims", "3d", "--batch", "8", "--patch-z", "8"]) == 0  # given, even at a 2D default
    assert used() == (128, 8, 8)
    assert "defaults for a CPU" not in capsys.readouterr().err
    assert main([*argv, "--dims", "2d"]) == 0  # 2D: the config's defaults, as before
    assert used() == (128, 16, 8)
    assert "defaults for a CPU" not in capsys.readouterr().err


def test_a_3d_pretrain_chosen_by_auto_takes_the_3d_cpu_defaults(tmp_path, capsys):
    stack = np.stack([blobs((64, 64), 6, seed=s)[0] for s in range(16)])
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    out = tmp_path / "p.pt"
    assert main(["pretrain", str(tmp_path / "stack.tif"), "--out", str(out), "--steps", "1", "--base", "4",
                 "--depth", "2", "--device", "cpu"]) == 0
    saved = ModelBundle.load(out).config
    assert saved["model"]["dims"] == "3d"
    assert (saved["data"]["patch"], saved["data"]["patch_z"], saved["batch"]) == (64, 16, 4)  # PRETRAIN_3D
    assert ("3D pretraining defaults for a CPU: patch 64, batch 4 (set --patch, --batch to change)"
            in capsys.readouterr().err)
    # Resuming continues with the checkpoint's settings: no defaults to take, none said.
    assert main(["pretrain", str(tmp_path / "stack.tif"), "--out", str(out), "--resume", str(out), "--steps", "2",
                 "--device", "cpu"]) == 0
    assert "defaults for a CPU" not in capsys.readouterr().err
    saved = ModelBundle.load(out).config
    assert (saved["data"]["patch"], saved["data"]["patch_z"], saved["batch"]) == (64, 16, 4)
