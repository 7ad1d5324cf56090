"""SIGKILL in the middle of a write: the next start finds the previous or the new state, whole.

A child process writes generation after generation of one kind of state (the widget's settings,
a checkpoint, an autosave session, a block-wise zarr prediction) and is killed with SIGKILL at a
random moment, as a power cut or the OOM killer would. The parent then starts the way the next
napari or CLI start does (load the settings, load the checkpoint, find and read the autosave,
run the same prediction again) and checks that it reads one complete generation: never a
broken file, never an exception, never a mix of two generations, never going backwards.

Settings, checkpoints and autosaves are written by forked children (a fork costs nothing, so the
slow suite runs hundreds of kills); the block-wise prediction runs in a fresh interpreter, since
torch's thread pools do not survive a fork.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_tower.model_bundle import ModelBundle

# Default suite: a few kills of each kind; slow suite: 230 kills in all (70 + 70 + 70 + 20), plus the default ones.
FAST_KILLS, SLOW_KILLS = 8, 70


def _fork_and_kill(write_forever: Callable[[], None], delay_s: float) -> None:
    """Run `write_forever` in a forked child and SIGKILL it after `delay_s`."""
    pid = os.fork()
    if pid == 0:  # the child: write until killed, never return into pytest
        try:
            write_forever()
        finally:
            os._exit(0)
    time.sleep(delay_s)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), "the writer ended before it was killed: the loop must run until killed"


def _kill_loop(kills: int, write: Callable[[int], None], check: Callable[[], int], seed: int) -> list[int]:
    """`kills` rounds of: a child writes generations found+1, found+2, ... and is killed; `check` reads back."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    write(0)
    # Kills land anywhere in the first few writes of each child. The floor keeps some writes completing when a
    # loaded machine makes the forked child several times slower than this warm write (it still writes on
    # without pause, so the kills still fall at random points inside writes).
    window = max(3 * (time.perf_counter() - start), 0.2)
    found = check()
    assert found == 0
    seen = [found]

    for _ in range(kills):
        first = found + 1

        def write_forever(first: int = first) -> None:
            gen = first
            while True:
                write(gen)
                gen += 1

        _fork_and_kill(write_forever, float(rng.uniform(0, window)))
        now = check()
        assert now >= found, f"went back from generation {found} to {now}"
        found = now
        seen.append(now)
    # Also proves the children really wrote (a writer stuck after fork would pass every check above).
    assert seen[-1] > seen[0], "no write ever completed: the kills came too early or the writer hangs"
    return seen


def _kills(request) -> int:
    return SLOW_KILLS if request.node.get_closest_marker("slow") else FAST_KILLS


# ------------------------------------------------------------------------------------------------ settings


def _settings_case(tmp_path, monkeypatch, kills: int) -> list[int]:
    from napari_tower.napari import settings

    monkeypatch.setenv(settings.ENV_DIR, str(tmp_path / "config"))

    def write(gen: int) -> None:
        shared = settings.SharedSettings()
        shared.shown(settings.load_settings())
        values = {"version": 2, "generation": gen, "last_dir": f"/data/{gen}",
                  "pretrain": {"steps": gen, "note": "x" * 20_000}}  # big enough for a kill to land inside
        assert shared.save(values)

    def check() -> int:
        raw = settings.settings_path().read_text(encoding="utf-8")  # the file itself must be whole JSON
        values = json.loads(raw)
        assert values == settings.load_settings()
        gen = values["generation"]
        assert values["pretrain"]["steps"] == gen and values["last_dir"] == f"/data/{gen}"
        return gen

    return _kill_loop(kills, write, check, seed=1)


def test_settings_survive_sigkill_mid_write(tmp_path, monkeypatch):
    seen = _settings_case(tmp_path, monkeypatch, FAST_KILLS)
    assert len(seen) == FAST_KILLS + 1


@pytest.mark.slow
def test_settings_survive_many_sigkills(tmp_path, monkeypatch):
    seen = _settings_case(tmp_path, monkeypatch, SLOW_KILLS)
    assert seen[-1] > seen[0], "no write ever completed: the kills came too early to test anything"


# ------------------------------------------------------------------------------------------------ checkpoints


def _bundle(gen: int) -> ModelBundle:
    # Tensors from numpy: torch's own fill runs on its thread pool, which hangs in a forked child.
    return ModelBundle("segmenter", {"steps": gen}, {"w": torch.from_numpy(np.full((256, 256), gen, np.float32)),
                                                      "b": torch.from_numpy(np.full(256, gen, np.float32))},
                       step=gen, target="binary", classes=2)


def _checkpoint_case(tmp_path, kills: int) -> list[int]:
    path = tmp_path / "model.pt"

    def check() -> int:
        bundle = ModelBundle.load(path, "segmenter")
        gen = bundle.step
        assert all(bool((t == gen).all()) for t in bundle.state.values()), "weights of two generations mixed"
        return gen

    seen = _kill_loop(kills, lambda gen: _bundle(gen).save(path), check, seed=2)
    _bundle(seen[-1] + 1).save(path)  # the next write clears the temporaries killed writers left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    return seen


def test_checkpoint_save_survives_sigkill_mid_write(tmp_path):
    _checkpoint_case(tmp_path, FAST_KILLS)


@pytest.mark.slow
def test_checkpoint_save_survives_many_sigkills(tmp_path):
    seen = _checkpoint_case(tmp_path, SLOW_KILLS)
    assert seen[-1] > seen[0]


# ------------------------------------------------------------------------------------------------ autosave


def _autosave_case(tmp_path, monkeypatch, kills: int) -> list[int]:
    from napari_tower.napari import autosave_store as store_module
    from napari_tower.napari.autosave_store import AutosaveStore, LabelsEntry, Snapshot, previous_session

    monkeypatch.setenv("NAPARI_TOWER_CONFIG_DIR", str(tmp_path / "config"))
    folder = store_module.autosave_root() / "session"

    def write(gen: int) -> None:
        store = AutosaveStore(folder)  # a restarted process writing on where the killed one stopped
        layers = [LabelsEntry(f"labels-{k}", f"layer {k}", [1.0, 1.0], [0.0, 0.0], "labels",
                              data=np.full((128, 128), gen, np.int32) + k, written=np.full((128, 128), gen, np.int32),
                              planes=[0], target="binary", image_name="nuclei") for k in range(2)]
        store.write(Snapshot(layers, {"segmenter": _bundle(gen)}, ["segmenter"]))
        store.release()

    def check() -> int:
        found = previous_session()  # what the next widget offers to restore
        assert found is not None and found.folder == folder
        restored = found.read()
        assert [e.name for e in restored.labels] == ["layer 0", "layer 1"], "an autosaved layer was lost"
        gen = restored.models["segmenter"].step
        for k, entry in enumerate(restored.labels):
            assert (entry.data == gen + k).all() and (entry.written == gen).all(), "two generations mixed"
        assert all(bool((t == gen).all()) for t in restored.models["segmenter"].state.values())
        return gen

    seen = _kill_loop(kills, write, check, seed=3)
    write(seen[-1] + 1)  # the next save removes what the killed writers left behind
    manifest = json.loads((folder / "session.json").read_text())
    named = {e["file"] for e in manifest["labels"]} | {e["prediction_file"] for e in manifest["labels"]}
    assert {p.name for p in folder.iterdir()} == named | set(manifest["model_files"].values()) | {
        "session.json", ".lock"}
    return seen


def test_autosave_survives_sigkill_mid_write(tmp_path, monkeypatch):
    _autosave_case(tmp_path, monkeypatch, FAST_KILLS)


@pytest.mark.slow
def test_autosave_survives_many_sigkills(tmp_path, monkeypatch):
    seen = _autosave_case(tmp_path, monkeypatch, SLOW_KILLS)
    assert seen[-1] > seen[0]


# ------------------------------------------------------------------------------------------------ block-wise prediction

_PREDICT = textwrap.dedent("""
    import sys
    import torch
    torch.set_num_threads(1)
    from napari_tower.config import PredictConfig
    from napari_tower.data import read_image
    from napari_tower.model_bundle import ModelBundle
    from napari_tower.segment import Predictor
    from napari_tower.segment.blockwise import predict_blockwise

    model, image, out = sys.argv[1:4]
    cfg = PredictConfig(tile=128, overlap=32, block=256, halo=32, instances=True, device="cpu")
    result = predict_blockwise(Predictor(ModelBundle.load(model, "segmenter"), cfg), read_image(image), out,
                              block=128, chunk=64)
    print("resumed", result.resumed, "of", result.blocks, flush=True)
""")


@pytest.fixture(scope="module")
def zarr_image(tmp_path_factory):
    import zarr

    from napari_tower.samples import synthetic_nuclei

    path = tmp_path_factory.mktemp("image") / "nuclei.zarr"
    image, _ = synthetic_nuclei((384, 384), 60, seed=4)
    z = zarr.open_array(str(path), mode="w", shape=image.shape, chunks=(96, 96), dtype=image.dtype)
    z[:] = image
    return path


def _reference(model: Path, image: Path, out: Path) -> np.ndarray:
    """An uninterrupted run (in this process: the same code, without an interpreter start-up)."""
    import zarr

    from napari_tower.config import PredictConfig
    from napari_tower.data import read_image
    from napari_tower.segment import Predictor
    from napari_tower.segment.blockwise import predict_blockwise

    cfg = PredictConfig(tile=128, overlap=32, block=256, halo=32, instances=True, device="cpu")
    predict_blockwise(Predictor(ModelBundle.load(model, "segmenter"), cfg), read_image(image), out, block=128,
                      chunk=64)
    return zarr.open_array(str(out / "labels"), mode="r")[:]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def _journal(out: Path) -> int:
    folder = out.with_name(f".{out.name}.partial") / ".journal"
    return len(list(folder.glob("*.npz"))) if folder.is_dir() else 0


def _blockwise_kills(model: Path, image: Path, out: Path, delays: Callable[[int], float | None],
                     max_runs: int = 60) -> tuple[int, list[str]]:
    """Run the prediction, killing run k after `delays(k)` s (None: after the journal's first new entry)."""
    import zarr

    kills, reports = 0, []
    for run in range(max_runs):
        before = _journal(out)
        proc = subprocess.Popen([sys.executable, "-c", _PREDICT, str(model), str(image), str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        delay = delays(run)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if (delay is None and _journal(out) > before) or (delay is not None and delay <= 0):
                break
            time.sleep(0.02)
            if delay is not None:
                delay -= 0.02
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        stdout, stderr = proc.communicate(timeout=60)
        if proc.returncode == 0:
            reports.append(stdout.strip())
            return kills, reports
        assert proc.returncode == -signal.SIGKILL, f"the prediction failed instead of being killed:\n{stderr}"
        # The next start finds no output (it never finished) or a complete earlier one, never half of one.
        if out.exists():
            zarr.open_array(str(out / "labels"), mode="r")[:]
    raise AssertionError(f"the prediction never finished in {max_runs} runs")


def test_blockwise_prediction_resumes_from_finished_blocks_after_sigkill(tmp_path, tiny_instance_model_file,
                                                                         zarr_image):
    import zarr

    reference = _reference(tiny_instance_model_file, zarr_image, tmp_path / "reference.zarr")
    out = tmp_path / "out.zarr"
    kills, reports = _blockwise_kills(tiny_instance_model_file, zarr_image, out, lambda run: None if run < 1 else 1e9)
    assert kills == 1
    resumed = int(reports[-1].split()[1])
    assert reports[-1].endswith("of 9") and 1 <= resumed < 9, reports
    np.testing.assert_array_equal(zarr.open_array(str(out / "labels"), mode="r")[:], reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr", "reference.zarr"]
    assert not (out / "block_local_ids").exists() and not (out / ".journal").exists()


@pytest.mark.slow
def test_blockwise_prediction_survives_many_sigkills(tmp_path, tiny_instance_model_file, zarr_image):
    import zarr

    reference = _reference(tiny_instance_model_file, zarr_image, tmp_path / "reference.zarr")
    rng = np.random.default_rng(5)
    # Random moments from interpreter start-up to the end of an uninterrupted run, timed here: fixed seconds
    # (1-8 s) let a fast machine finish before the first kill. A resumed run has fewer blocks left, so a late
    # moment may come after it finished: up to 20 kills, then a run to the end.
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", _PREDICT, str(tiny_instance_model_file), str(zarr_image),
                    str(tmp_path / "timed.zarr")], check=True, capture_output=True, env=_env())
    whole = time.monotonic() - start
    shutil.rmtree(tmp_path / "timed.zarr")
    out = tmp_path / "out.zarr"
    kills, reports = _blockwise_kills(tiny_instance_model_file, zarr_image, out,
                                      lambda run: float(rng.uniform(0.05, 0.9) * whole) if run < 20 else 1e9)
    assert kills >= 5, f"{kills} kills in a {whole:.1f} s prediction"
    np.testing.assert_array_equal(zarr.open_array(str(out / "labels"), mode="r")[:], reference)
