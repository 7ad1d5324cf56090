"""The command line: success paths and the error contract (status 2, one `error:` line, no traceback)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_tower.cli import main

from ..conftest import blobs


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The command in a real process (test_pretrain_1d_array: what a shell sees)."""
    return subprocess.run([sys.executable, "-m", "napari_tower", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture
def stack(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([blobs((96, 96), 10, seed=s)[0] for s in range(3)]))
    return path


def _assert_user_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"not a tiff at all"), "could not be read"),
        (lambda p: tifffile.imwrite(p, np.zeros((0, 8), np.uint8)), "empty"),
        (lambda p: tifffile.imwrite(p, np.full((64, 64), np.nan, np.float32)), "NaN"),
        (lambda p: tifffile.imwrite(p, np.ones((64, 64), np.uint8)), "constant"),
        (lambda p: tifffile.imwrite(p, np.random.rand(40, 40).astype(np.float32)), "smaller than the 64 px patch"),
    ],
)
def test_pretrain_bad_input(tmp_path, run_main, make, fragment):
    bad = tmp_path / "bad.tif"
    make(bad)
    _assert_user_error(run_main("pretrain", bad, "--out", tmp_path / "x.pt", "--steps", "1", "--patch", "64"), fragment)
    assert not (tmp_path / "x.pt").exists()


def test_pretrain_1d_array(tmp_path):
    np.save(tmp_path / "line.npy", np.arange(100.0))
    _assert_user_error(run_cli("pretrain", tmp_path / "line.npy", "--out", tmp_path / "x.pt"), "cannot be read as an image")


def test_pretrain_then_preview(tmp_path, stack, run_main):
    out = tmp_path / "m.pt"
    assert main(["pretrain", str(stack), "--out", str(out), "--steps", "3", "--patch", "64", "--batch", "4",
                 "--base", "8", "--quiet"]) == 0
    from napari_tower.model_bundle import ModelBundle

    ckpt = ModelBundle.load(out, "pretrained")
    assert ckpt.method == "tower" and ckpt.step == 3 and len(ckpt.history["loss"]) == 3
    result = run_main("preview", stack, "--out", tmp_path / "prev")
    assert result.returncode == 0, result.stderr
    files = sorted(p.stem for p in (tmp_path / "prev").glob("*.tif"))
    assert {"nonlinear", "masking", "shuffle", "inpaint", "outpaint", "tower"} <= set(files)
    for name in files:
        view = tifffile.imread(tmp_path / "prev" / f"{name}.tif")
        assert view.min() >= 0 and view.max() <= 1


def test_segmenter_where_pretrained_is_needed(tmp_path, stack, run_main):
    out = tmp_path / "m.pt"
    main(["pretrain", str(stack), "--out", str(out), "--steps", "0", "--patch", "64", "--base", "8", "--quiet"])
    _assert_user_error(run_main("predict", out, stack, "--out", tmp_path / "pred"), "fine-tune it first")


def test_truncated_checkpoint_and_unwritable_output(tmp_path, stack, run_main):
    (tmp_path / "t.pt").write_bytes(b"PK\x03\x04garbage")
    _assert_user_error(run_main("predict", tmp_path / "t.pt", stack, "--out", tmp_path / "pred"), "damaged")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _assert_user_error(run_main("pretrain", stack, "--out", blocker / "m.pt", "--steps", "0", "--patch", "64",
                                "--base", "8"), "could not write checkpoint")
