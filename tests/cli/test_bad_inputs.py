"""The catalogue of bad inputs (docs/bad-inputs.md) through the command line, one test per row.

Every bad input must give exit status 2 and a single `error: ...` line that names
the problem and the fix, never a traceback, and must leave the checkpoints and
predictions already on disk byte for byte as they were. Rows run in-process
(`napari_tower.cli.main`) unless a signal, a resource limit or a traceback on the
real stderr is what is being tested; then they run `python -m napari_tower`.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_tower.cli import main
from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig, PretrainConfig, from_dict
from napari_tower.data import read_image, read_labels
from napari_tower.errors import CheckpointError, TowerError
from napari_tower.model_bundle import VERSION, ModelBundle
from napari_tower.segment import finetune
from napari_tower.train import pretrain

from ..conftest import blobs
from ..core.test_hostile_files import _patch_dimensions, _png

TINY = ["--patch", "64", "--batch", "2", "--base", "4", "--quiet"]


@dataclass
class Kit:
    """Small real inputs and tiny real models, made once for the module."""

    folder: Path
    stack: Path  # 2 planes of 96 x 96 nuclei
    labels: Path  # binary masks for it
    semantic: Path  # classes 1 and 2
    rgb: Path  # 64 x 64 RGB
    rgb_labels: Path
    pretrained: Path
    segmenter: Path  # binary, grayscale
    semantic_model: Path  # 2 classes
    rgb_segmenter: Path


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Kit:
    d = tmp_path_factory.mktemp("kit")
    planes = [blobs((96, 96), 10, seed=s) for s in range(2)]
    tifffile.imwrite(d / "stack.tif", np.stack([im for im, _ in planes]))
    instances = np.stack([lab for _, lab in planes])
    tifffile.imwrite(d / "labels.tif", (instances > 0).astype(np.uint8))
    tifffile.imwrite(d / "semantic.tif", np.where(instances > 0, instances % 2 + 1, 0).astype(np.uint8))
    rgb_image, rgb_mask = blobs((64, 64), 6, seed=5)
    tifffile.imwrite(d / "rgb.tif", np.stack([rgb_image // 4] * 3, axis=-1).astype(np.uint8), photometric="rgb")
    tifffile.imwrite(d / "rgb_labels.tif", (rgb_mask > 0).astype(np.uint8))

    small = dict(data=DataConfig(patch=64), model=ModelConfig(base=4, depth=2))
    images = [read_image(d / "stack.tif")]
    pretrain(images, PretrainConfig(steps=0, batch=2, device="cpu", **small), d / "pretrained.pt")
    tune = dict(steps=1, batch=2, device="cpu", val_every=0, checkpoint_every=0)
    finetune(images, [read_labels(d / "labels.tif")], FinetuneConfig(**tune, **small), d / "segmenter.pt",
             init=d / "pretrained.pt")
    finetune(images, [read_labels(d / "semantic.tif")], FinetuneConfig(target="semantic", **tune, **small),
             d / "semantic_model.pt", init=d / "pretrained.pt")
    finetune([read_image(d / "rgb.tif")], [read_labels(d / "rgb_labels.tif")],
             FinetuneConfig(**tune, data=DataConfig(patch=32), model=ModelConfig(base=4, depth=2)),
             d / "rgb_segmenter.pt")
    return Kit(d, d / "stack.tif", d / "labels.tif", d / "semantic.tif", d / "rgb.tif", d / "rgb_labels.tif",
               d / "pretrained.pt", d / "segmenter.pt", d / "semantic_model.pt", d / "rgb_segmenter.pt")


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_user_error(code: int, err: str, *fragments: str) -> str:
    """Exit 2, exactly one `error:` line holding every fragment, no traceback; returns the line."""
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(paths: list[Path]) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


def assert_untouched(before: dict[Path, bytes]) -> None:
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} changed"
        assert not list(path.parent.glob(".*.tmp")), "a temporary file was left behind"


# ------------------------------------------------------------------------------------------------ the table


@dataclass
class Setup:
    args: list
    guarded: list[Path]  # existing outputs that must survive unchanged


def _existing_checkpoint(kit: Kit, tmp: Path, source: Path | None = None) -> Path:
    out = tmp / "existing.pt"
    shutil.copy(source or kit.pretrained, out)
    return out


def _existing_prediction(tmp: Path, stem: str) -> tuple[Path, Path]:
    folder = tmp / "predictions"
    folder.mkdir(exist_ok=True)
    earlier = folder / f"{stem}.tif"
    tifffile.imwrite(earlier, np.arange(64, dtype=np.uint16).reshape(8, 8))
    return folder, earlier


def _pretrain_on(kit: Kit, tmp: Path, bad: Path, *extra) -> Setup:
    out = _existing_checkpoint(kit, tmp)
    return Setup(["pretrain", bad, "--out", out, "--steps", "1", *TINY, *extra], [out])


def _predict_with(kit: Kit, tmp: Path, model: Path, image: Path) -> Setup:
    folder, earlier = _existing_prediction(tmp, image.stem)
    return Setup(["predict", model, image, "--out", folder, "--quiet"], [earlier, model])


def _finetune_with(kit: Kit, tmp: Path, image: Path, labels: Path, init: Path | None, *extra) -> Setup:
    out = _existing_checkpoint(kit, tmp, kit.segmenter)
    init_args = ["--init", init] if init is not None else []
    return Setup(["finetune", image, "--labels", labels, "--out", out, *init_args, "--steps", "1", *TINY, *extra],
                 [out] + ([init] if init is not None else []))


def _tif(tmp: Path, name: str, array: np.ndarray, **kw) -> Path:
    tifffile.imwrite(tmp / name, array, **kw)
    return tmp / name


def _npy(tmp: Path, name: str, array: np.ndarray) -> Path:
    np.save(tmp / name, array)
    return tmp / name


def _truncated_copy(source: Path, target: Path) -> Path:
    raw = source.read_bytes()
    target.write_bytes(raw[: len(raw) // 2])
    return target


def _future_checkpoint(kit: Kit, tmp: Path) -> Path:
    payload = ModelBundle.load(kit.segmenter).to_dict()
    payload["version"] = VERSION + 1
    torch.save(payload, tmp / "future.pt")
    return tmp / "future.pt"


def _a_file_in_the_way(tmp: Path) -> Path:
    (tmp / "a-file").write_text("not a folder")
    return tmp / "a-file"


def _random(shape, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).random(shape).astype(dtype)


def _tiff_bomb(tmp: Path) -> Path:
    """200,000 x 200,000 pixels (80 GB) declared by a 300-byte zlib TIFF."""
    path = _tif(tmp, "bomb.tif", np.zeros((64, 64), np.uint16), compression="zlib", rowsperstrip=64)
    _patch_dimensions(path, 200_000, 200_000, 200_000)
    return path


def _png_bomb(tmp: Path) -> Path:
    _png(tmp / "bomb.png", 100_000, 100_000)
    return tmp / "bomb.png"


def _huge_ids(tmp: Path) -> Path:
    labels = np.zeros((96, 96), np.uint64)
    labels[10:30, 10:30] = 2**64 - 1
    return _tif(tmp, "huge-ids.tif", labels)


ROWS: dict[str, tuple[Callable[[Kit, Path], Setup], tuple[str, ...]]] = {
    "missing file": (lambda k, t: _pretrain_on(k, t, t / "missing.tif"), ("missing.tif does not exist",)),
    "not an image": (lambda k, t: _pretrain_on(k, t, (t / "x.tif", (t / "x.tif").write_bytes(b"text"))[0]),
                     ("could not be read", "not an image")),
    "truncated image": (lambda k, t: _pretrain_on(k, t, _truncated_copy(k.stack, t / "cut.tif")),
                        ("cut.tif declares an image of 2 x 96 x 96 uint16", "it is truncated")),
    "decompression bomb (TIFF)": (lambda k, t: _pretrain_on(k, t, _tiff_bomb(t)),
                                  ("bomb.tif declares an image of 200000 x 200000 uint16", "decompression bomb")),
    "decompression bomb (PNG)": (lambda k, t: _pretrain_on(k, t, _png_bomb(t)),
                                 ("bomb.png was not read", "decompression bomb")),
    "label ids beyond int64": (lambda k, t: _finetune_with(k, t, k.stack, _huge_ids(t), None),
                               ("huge-ids.tif has label ids up to 18446744073709551615", "relabel")),
    "empty image": (lambda k, t: _pretrain_on(k, t, _tif(t, "e.tif", np.zeros((0, 8), np.uint8))), ("empty",)),
    "constant image": (lambda k, t: _pretrain_on(k, t, _tif(t, "c.tif", np.full((96, 96), 7, np.uint16))),
                       ("constant", "nothing to learn")),
    "NaN image": (lambda k, t: _pretrain_on(k, t, _tif(t, "n.tif", np.where(_random((96, 96)) > 0.5, np.nan, 1.0)
                                                       .astype(np.float32))), ("NaN", "replace them")),
    "Inf image": (lambda k, t: _pretrain_on(k, t, _tif(t, "i.tif", np.where(_random((96, 96)) > 0.99, np.inf,
                                                                            _random((96, 96))).astype(np.float32))),
                  ("infinite", "replace them")),
    "1-D array": (lambda k, t: _pretrain_on(k, t, _npy(t, "line.npy", np.arange(100.0))),
                  ("1 dimension(s)", "cannot be read as an image")),
    "6-D array": (lambda k, t: _predict_with(k, t, k.segmenter, _npy(t, "six.npy", _random((2, 2, 2, 2, 32, 32)))),
                  ("6 dimension(s)", "up to 5 dimensions")),
    "image smaller than the patch": (lambda k, t: _pretrain_on(k, t, _tif(t, "s.tif", _random((40, 40)))),
                                     ("40 x 40 pixels, smaller than the 64 px patch",)),
    "image smaller than the network": (
        lambda k, t: _finetune_with(k, t, _tif(t, "s.tif", _random((10, 12))),
                                    _tif(t, "sl.tif", (_random((10, 12)) > 0.5).astype(np.uint8)), None),
        ("10 x 12 px", "at least 16 x 16")),
    "RGB into a grayscale model": (lambda k, t: _predict_with(k, t, k.segmenter, k.rgb),
                                   ("3 channel(s) but the model expects 1", "convert it to grayscale")),
    "grayscale into an RGB model": (lambda k, t: _predict_with(k, t, k.rgb_segmenter, k.stack),
                                    ("1 channel(s) but the model expects 3",)),
    "channel count vs the model": (
        lambda k, t: _predict_with(k, t, k.segmenter, _tif(t, "two.tif", _random((2, 64, 64)),
                                                           metadata={"axes": "CYX"})),
        ("2 channel(s) but the model expects 1",)),
    "channel count vs the pretrained model": (
        lambda k, t: _finetune_with(k, t, k.rgb, k.rgb_labels, k.pretrained, "--patch", "32"),
        ("trained on 1-channel images but these have 3",)),
    "labels of another shape": (
        lambda k, t: _finetune_with(k, t, k.stack, _tif(t, "l.tif", np.ones((2, 50, 50), np.uint8)), None),
        ("shape (2, 50, 50)", "2 plane(s) of 96 x 96", "same size")),
    "labels without foreground": (
        lambda k, t: _finetune_with(k, t, k.stack, _tif(t, "z.tif", np.zeros((2, 96, 96), np.uint8)), None),
        ("no foreground", "annotate at least one object")),
    "label ids beyond the classes": (
        lambda k, t: _finetune_with(k, t, k.stack, _tif(t, "3.tif", np.minimum(read_labels(k.semantic) * 2, 3)
                                                         .astype(np.uint8)), k.semantic_model),
        ("3 classes but the model knows 2",)),
    "pretrained checkpoint where a segmenter is needed": (
        lambda k, t: _predict_with(k, t, k.pretrained, k.stack), ("pretrained checkpoint", "fine-tune it first")),
    "segmenter checkpoint where a pretrained one is needed": (
        lambda k, t: Setup(["pretrain", k.stack, "--resume", k.segmenter, "--out", _existing_checkpoint(k, t),
                            *TINY], [t / "existing.pt", k.segmenter]),
        ("segmenter checkpoint, but a pretrained checkpoint is needed",)),
    "truncated checkpoint": (lambda k, t: _predict_with(k, t, _truncated_copy(k.segmenter, t / "cut.pt"), k.stack),
                             ("damaged", "truncated")),
    "checkpoint from a future version": (lambda k, t: _predict_with(k, t, _future_checkpoint(k, t), k.stack),
                                         (f"format version {VERSION + 1}", "upgrade napari-tower")),
    "unwritable checkpoint path": (
        lambda k, t: Setup(["pretrain", k.stack, "--out", _a_file_in_the_way(t) / "m.pt", "--steps", "1", *TINY],
                           [k.pretrained]),
        ("could not write checkpoint", "part of the path is a file")),
    "unwritable prediction folder": (
        lambda k, t: Setup(["predict", k.segmenter, k.stack, "--out", _a_file_in_the_way(t) / "out", "--quiet"],
                           [t / "a-file"]),
        ("could not write", "part of the path is a file")),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_cli_refuses_bad_input(row, kit, tmp_path, capsys):
    build, fragments = ROWS[row]
    setup = build(kit, tmp_path)
    before = snapshot(setup.guarded)
    code, err = cli(capsys, *setup.args)
    assert_user_error(code, err, *fragments)
    assert_untouched(before)


# ------------------------------------------------------------------------------------------------ unreadable


def _without_root_file_access() -> None:
    """In the child, before exec: drop root's right to read any file, so file permissions apply as to a user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "cannot drop capabilities")


def test_unreadable_file_names_the_permission_problem(kit, tmp_path):
    unreadable = tmp_path / "locked.tif"
    shutil.copy(kit.stack, unreadable)
    unreadable.chmod(0)
    out = _existing_checkpoint(kit, tmp_path)
    before = snapshot([out])
    preexec = _without_root_file_access if os.geteuid() == 0 else None
    result = subprocess.run([sys.executable, "-m", "napari_tower", "pretrain", str(unreadable), "--out", str(out),
                             "--steps", "1", *TINY], capture_output=True, text=True, timeout=300, preexec_fn=preexec)
    if result.returncode != 2 and "cannot drop capabilities" in result.stderr:
        pytest.skip("this container cannot drop root's file access")
    assert_user_error(result.returncode, result.stderr, "locked.tif cannot be read", "Permission denied",
                      "permissions")
    assert_untouched(before)


# ------------------------------------------------------------------------------------------------ unsafe checkpoints


class _CreatesFile:
    """Unpickling this opens (creates) a file: what a malicious checkpoint does to run code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsShell:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _torch_file_with(payload_type: type, target: Path, marker: Path) -> None:
    torch.save({"format": "napari-tower", "version": VERSION, "kind": "segmenter", "config": {}, "state": {},
                "evil": payload_type(marker)}, target)


def _raw_pickle_with(payload_type: type, target: Path, marker: Path) -> None:
    target.write_bytes(pickle.dumps({"format": "napari-tower", "evil": payload_type(marker)}))


@pytest.mark.parametrize("payload", [_CreatesFile, _RunsShell])
@pytest.mark.parametrize("container", [_torch_file_with, _raw_pickle_with])
def test_checkpoint_that_would_run_code_is_refused_and_runs_nothing(kit, tmp_path, capsys, payload, container):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    container(payload, evil, marker)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="was refused"):
        ModelBundle.load(evil)
    assert not marker.exists()
    out = _existing_checkpoint(kit, tmp_path)
    before = snapshot([out])
    for args in (["predict", evil, kit.stack, "--out", tmp_path / "pred"],
                 ["finetune", kit.stack, "--labels", kit.labels, "--init", evil, "--out", out, *TINY],
                 ["pretrain", kit.stack, "--resume", evil, "--out", out, *TINY]):
        code, err = cli(capsys, *args)
        line = assert_user_error(code, err, "was refused", "could run code")
        assert "weights_only" not in line  # never advise switching the check off
        assert not marker.exists()
    assert_untouched(before)


# ------------------------------------------------------------------------------------------------ disk full


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # A real kernel limit: write() past `limit` bytes fails with EFBIG, exactly like a disk that fills up
        # mid-file (Python ignores SIGXFSZ, so it surfaces as OSError).
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


def test_disk_full_while_writing_keeps_the_previous_checkpoint_and_prediction(kit, tmp_path):
    ckpt = _existing_checkpoint(kit, tmp_path)
    folder, earlier = _existing_prediction(tmp_path, kit.stack.stem)
    before = snapshot([ckpt, earlier])
    base = [sys.executable, "-m", "napari_tower"]
    runs = {
        "checkpoint": base + ["pretrain", str(kit.stack), "--resume", str(ckpt), "--out", str(ckpt), "--steps", "1",
                              "--quiet"],
        "prediction": base + ["predict", str(kit.segmenter), str(kit.stack), "--out", str(folder), "--quiet"],
    }
    for _what, command in runs.items():
        result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                preexec_fn=_limit_file_size(128))  # below any checkpoint or TIFF
        assert_user_error(result.returncode, result.stderr, "could not write", "free some space")
    assert_untouched(before)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ------------------------------------------------------------------------------------------------ out of memory


def test_prediction_retries_with_smaller_batches_then_tiles(kit):
    """A device with room for fewer tiles than asked: prediction still finishes, with the same result."""
    from napari_tower.data import from_array
    from napari_tower.segment import Predictor

    ckpt = ModelBundle.load(kit.segmenter, "segmenter")
    image = from_array(np.stack([blobs((200, 200), 20, seed=s)[0] for s in range(2)]), "two planes")
    free = Predictor(ckpt, PredictConfig(tile=128, overlap=16, batch=4, device="cpu")).predict(image)

    def constrained(budget_px: int) -> tuple[Predictor, list[tuple[int, ...]]]:
        predictor = Predictor(ckpt, PredictConfig(tile=128, overlap=16, batch=4, device="cpu"))
        real_forward, calls = predictor.forward, []

        def forward_within_budget(x):
            calls.append(tuple(x.shape))
            if x.shape[0] * x.shape[-1] * x.shape[-2] > budget_px:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real_forward(x)

        predictor.forward = forward_within_budget
        return predictor, calls

    # Room for one 112 px tile (the 200 px rows hold two): only the batch shrinks, the result is identical.
    one_tile, calls = constrained(112 * 112)
    result = one_tile.predict(image)
    assert calls[0][0] == 2 and (one_tile.cfg.tile, one_tile.cfg.batch) == (128, 1)
    np.testing.assert_allclose(result.probabilities, free.probabilities, atol=1e-5)  # batch size changes float sums on AVX2

    # Room for one 64 px tile only: the tiles shrink too; what fits is kept for the second plane.
    small, calls = constrained(64 * 64)
    result = small.predict(image)
    assert (small.cfg.tile, small.cfg.batch) == (64, 1)
    first_fit = next(i for i, (b, _, h, w) in enumerate(calls) if b * h * w <= 64 * 64)
    assert all(b * h * w <= 64 * 64 for b, _, h, w in calls[first_fit:])  # no failed attempt on the second plane
    assert (result.labels == free.labels).mean() > 0.98


def test_prediction_out_of_memory_even_for_one_small_tile_gives_advice():
    from napari_tower.segment.retry import predict_tiled_within_memory

    def never_fits(x):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory")

    cfg = PredictConfig(tile=256, overlap=16, batch=2)
    notes: list[str] = []
    with pytest.raises(TowerError, match=r"out of memory even for one 64 px tile.*device cpu"):
        predict_tiled_within_memory(np.zeros((1, 200, 300), np.float32), never_fits, 2, cfg, notify=notes.append)
    assert notes == ["out of memory with 2 tile(s) of 256 px at a time: retrying with 1 of 256 px",
                     "out of memory with 1 tile(s) of 256 px at a time: retrying with 1 of 128 px",
                     "out of memory with 1 tile(s) of 128 px at a time: retrying with 1 of 64 px"]

    def broken(x):
        raise RuntimeError("a bug, not memory")

    with pytest.raises(RuntimeError, match="a bug"):  # anything else is not retried
        predict_tiled_within_memory(np.zeros((1, 64, 64), np.float32), broken, 2, PredictConfig(tile=64, overlap=0))


_UNDER_MEMORY_LIMIT = textwrap.dedent("""
    import os, resource, sys
    import numpy, scipy.optimize, skimage.measure, tifffile, torch  # everything loaded before the limit
    import napari_tower.cli, napari_tower.segment.predict, napari_tower.train.pretrain
    torch.set_num_threads(1)
    pages = int(open("/proc/self/statm").read().split()[0])
    headroom = int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (pages * os.sysconf("SC_PAGE_SIZE") + headroom, resource.RLIM_INFINITY))
    sys.exit(napari_tower.cli.main(sys.argv[2:]))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux address-space limits")
def test_real_out_of_memory_in_training_is_one_clear_line(kit, tmp_path):
    """A batch that cannot fit in 600 MB: a real allocation failure, reported as advice, not a traceback."""
    big = _tif(tmp_path, "big.tif", blobs((512, 512), 60)[0])
    out = _existing_checkpoint(kit, tmp_path)
    before = snapshot([out])
    result = subprocess.run([sys.executable, "-c", _UNDER_MEMORY_LIMIT, "600", "pretrain", str(big), "--out", str(out),
                             "--patch", "512", "--batch", "64", "--base", "64", "--steps", "1", "--device", "cpu",
                             "--quiet"], capture_output=True, text=True, timeout=300)
    assert_user_error(result.returncode, result.stderr, "ran out of memory", "smaller --batch")
    assert_untouched(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux address-space limits")
def test_real_out_of_memory_in_prediction_is_retried_smaller(kit, tmp_path):
    """A 1024 px tile of a base-16 U-Net needs more than 160 MB, a 512 px one less: the CLI retries and finishes.

    (Measured: a 1536 px tile of this model needs 500-700 MB, a 768 px one 150-250 MB: about 4x per halving.)
    """
    model = tmp_path / "base16.pt"
    finetune([read_image(kit.stack)], [read_labels(kit.labels)],
             FinetuneConfig(steps=0, batch=2, device="cpu", val_every=0, checkpoint_every=0,
                            data=DataConfig(patch=64), model=ModelConfig(base=16, depth=2)), model)
    big = _tif(tmp_path, "big.tif", blobs((1024, 1024), 120)[0])
    result = subprocess.run([sys.executable, "-c", _UNDER_MEMORY_LIMIT, "160", "predict", str(model), str(big),
                             "--out", str(tmp_path / "pred"), "--tile", "2048", "--device", "cpu"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "out of memory with 1 tile(s) of 1024 px at a time: retrying with 1 of 512 px" in result.stderr
    labels = tifffile.imread(tmp_path / "pred" / "big.tif")
    assert labels.shape == (1024, 1024)


# ------------------------------------------------------------------------------------------------ interruption


def _start_pretraining(kit: Kit, out: Path, steps: int) -> subprocess.Popen:
    # As many torch threads as this process, so the resumed run's numbers can be compared with one made here.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-m", "napari_tower", "pretrain", str(kit.stack), "--out", str(out),
                             "--steps", str(steps), "--patch", "32", "--batch", "2", "--base", "4", "--depth", "2",
                             "--device", "cpu", "--checkpoint-every", "0"], stderr=subprocess.PIPE, text=True, env=env)


def _interrupt_after_some_steps(process: subprocess.Popen, signum: int) -> tuple[int, str]:
    """Wait until the progress output shows steps done, send `signum`, return (exit status, all of stderr)."""
    seen = []
    for line in process.stderr:
        seen.append(line)
        match = re.search(r"\] (\d+)/(\d+)", line)
        if match and int(match.group(1)) > 0:
            process.send_signal(signum)
            break
    rest = process.communicate(timeout=120)[1]
    return process.returncode, "".join(seen) + rest


def test_sigint_keeps_a_checkpoint_and_resume_continues_the_run(kit, tmp_path):
    steps = 40  # progress lines every 2 steps; the signal comes after the first
    out = tmp_path / "run.pt"
    code, err = _interrupt_after_some_steps(_start_pretraining(kit, out, steps), signal.SIGINT)
    assert code == 130, err
    assert "Traceback" not in err
    assert f"continue with: napari-tower pretrain {kit.stack} --out {out} --resume {out}" in err
    first = ModelBundle.load(out, "pretrained")
    stopped_at = first.step
    assert 0 < stopped_at < steps
    assert first.history["step"] == [float(s) for s in range(1, stopped_at + 1)]

    # Resume exactly as the message says (no --steps: the interrupted run's own total and schedule).
    assert main(["pretrain", str(kit.stack), "--out", str(out), "--resume", str(out), "--quiet"]) == 0
    resumed = ModelBundle.load(out, "pretrained")
    history = resumed.history
    assert resumed.step == steps and resumed.config["steps"] == steps
    assert history["step"] == [float(s) for s in range(1, steps + 1)]
    for key, values in first.history.items():
        assert history[key][: len(values)] == values  # the first run's history is kept as it was
    # ...and the rest continues it: the same numbers an uninterrupted run gives (same batches, same schedule).
    cfg = from_dict(PretrainConfig, resumed.config)
    straight = pretrain([read_image(kit.stack)], cfg).checkpoint.history
    np.testing.assert_allclose(history["loss"], straight["loss"], rtol=1e-3, atol=1e-4)


def test_sigterm_also_keeps_a_resumable_checkpoint(kit, tmp_path):
    out = tmp_path / "run.pt"
    code, err = _interrupt_after_some_steps(_start_pretraining(kit, out, 80), signal.SIGTERM)
    assert code == 130 and "Traceback" not in err, err
    ckpt = ModelBundle.load(out, "pretrained")
    assert 0 < ckpt.step < 80 and ckpt.optimizer is not None


def test_interrupted_write_keeps_the_old_file(tmp_path):
    """Ctrl-C (or a crash) in the middle of writing: the old file stays whole and no temporary file is left."""
    from napari_tower.atomic import atomic_write

    target = tmp_path / "model.pt"
    target.write_bytes(b"the good old checkpoint")
    with pytest.raises(KeyboardInterrupt), atomic_write(target, "checkpoint") as fh:
        fh.write(b"half of a new one")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"the good old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
