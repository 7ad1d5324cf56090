"""A working day in minutes: many correct-and-retrain rounds in one real napari viewer, measured per round.

    xvfb-run -a python benchmarks/soak.py [--rounds 50 --size 512 --steps 2 --base 4 --threads 1 --out FILE]

One viewer and one napari-tower widget, as a microscopist keeps them open all day. The widget
predicts a size x size image of synthetic nuclei once; then each round paints a correction into
the predicted Labels layer (a square of another value, at a new place every round; every third
round also erases one), clicks **Retrain from corrections** and waits until the retrain, its new
prediction and the autosave it triggers are done. After each round (and a `gc.collect()`) it
records the resident memory, open file descriptors, native and Python threads, Qt widgets alive,
Python objects tracked by the garbage collector, layers in the viewer, and the round's length.

Prints one JSON object: the per-round records and a summary (memory at rounds 10 and the last,
growth between them in percent, the spread of threads and handles, the round-time slope).
`tests/widget/test_soak.py` runs `run_rounds` with a few rounds in the default suite and 50 in the
slow one. Round times measured on a shared machine include other jobs' load.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_name

WIDGET = "TOWER segmentation"


def measure() -> dict[str, float]:
    """The process's footprint now (after a full garbage collection)."""
    import psutil
    from qtpy.QtWidgets import QApplication

    gc.collect()
    proc = psutil.Process()
    return {"rss_mb": proc.memory_info().rss / 2**20, "fds": proc.num_fds(), "threads": proc.num_threads(),
            "py_threads": threading.active_count(), "qt_widgets": len(QApplication.allWidgets()),
            "gc_objects": len(gc.get_objects())}


def nuclei(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from napari_tower.samples import synthetic_nuclei

    return synthetic_nuclei((size, size), max(8, size * size // 3000), seed=seed)


def small_segmenter(size: int = 128, base: int = 4) -> Any:
    """A quickly trained binary segmenter (base 4 by default): the soak is about the loop, not accuracy."""
    from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig
    from napari_tower.data import from_array
    from napari_tower.segment import finetune

    image, labels = nuclei(size, seed=1)
    cfg = FinetuneConfig(steps=3, batch=2, val_every=0, checkpoint_every=0, device="cpu",
                         data=DataConfig(patch=64), model=ModelConfig(base=base))
    return finetune([from_array(image)], [(labels > 0)[None].astype(np.int64)], cfg).checkpoint


def set_up(viewer: Any, widget: Any, size: int, steps: int, wait: Callable[[Callable[[], bool], float], None],
           base: int = 4) -> Any:
    """Small settings, a segmenter, the image and its first prediction; returns the predicted Labels layer."""
    t = widget.train
    t.patch.value, t.batch.value, t.device.value = 64, 2, "cpu"
    widget.segment.steps.value = 2
    widget.correct.steps.value = steps
    widget.session.segmenter = small_segmenter(base=base)
    widget.update_models()
    image, _ = nuclei(size)
    layer = viewer.add_image(image, name="nuclei")
    widget.segment.image.set_layer(layer)
    widget.segment.predict_button.click()
    wait(lambda: not widget.busy, 120)
    return viewer.layers["nuclei tower labels"]


def edit(labels: Any, round_no: int, size: int) -> None:
    """A correction: a 24 px square of class 2 (binary predictions hold 0 and 1), sometimes an erase too."""
    rng = np.random.default_rng(round_no)
    y, x = (int(v) for v in rng.integers(0, size - 24, 2))
    yy, xx = np.mgrid[y:y + 24, x:x + 24]
    labels.data_setitem((yy.ravel(), xx.ravel()), 2)
    if round_no % 3 == 0:
        y, x = (int(v) for v in rng.integers(0, size - 16, 2))
        yy, xx = np.mgrid[y:y + 16, x:x + 16]
        labels.data_setitem((yy.ravel(), xx.ravel()), 0)


def run_rounds(viewer: Any, widget: Any, rounds: int, wait: Callable[[Callable[[], bool], float], None],
               size: int = 512, steps: int = 2, log: Callable[[str], None] = lambda s: None,
               base: int = 4) -> list[dict[str, float]]:
    """Set up, then `rounds` correct-and-retrain rounds; one record per round (round 0: after set-up)."""
    labels = set_up(viewer, widget, size, steps, wait, base)
    widget.autosave.flush()
    records = [{"round": 0, "round_s": 0.0, "layers": len(viewer.layers), **measure()}]
    for r in range(1, rounds + 1):
        model = widget.session.segmenter
        start = time.perf_counter()
        edit(labels, r, size)
        widget.correct.labels.set_layer(labels)
        widget.correct.button.click()
        wait(lambda: not widget.busy, 120)
        widget.autosave.flush()
        elapsed = time.perf_counter() - start
        if widget.session.segmenter is model or viewer.layers["nuclei tower labels"] is not labels:
            raise RuntimeError(f"round {r} did not retrain into the same layer: {widget.status.text()}")
        records.append({"round": r, "round_s": elapsed, "layers": len(viewer.layers), **measure()})
        log(json.dumps(records[-1]))
    return records


def summarise(records: list[dict[str, float]], early: int = 10) -> dict[str, Any]:
    """Growth from round `early` (or the first round when fewer) to the last, and the spread of the counts."""
    rounds = [r for r in records if r["round"] >= 1]
    first = next((r for r in rounds if r["round"] == early), rounds[0])
    last = rounds[-1]
    after = [r for r in rounds if r["round"] >= first["round"]]
    times = np.array([r["round_s"] for r in after])
    slope = float(np.polyfit(np.arange(len(times)), times, 1)[0]) if len(times) > 1 else 0.0
    half = len(times) // 2
    return {
        "rounds": last["round"], "from_round": first["round"],
        "rss_mb_from": round(first["rss_mb"], 1), "rss_mb_last": round(last["rss_mb"], 1),
        "rss_growth_pct": round(100 * (last["rss_mb"] / first["rss_mb"] - 1), 2),
        **{f"{k}_range": [min(r[k] for r in after), max(r[k] for r in after)]
           for k in ("threads", "py_threads", "fds", "qt_widgets", "layers")},
        "gc_objects_from": first["gc_objects"], "gc_objects_last": last["gc_objects"],
        "round_s_median": round(float(np.median(times)), 3),
        "round_s_first_half": round(float(np.median(times[:half])) if half else float(times[0]), 3),
        "round_s_second_half": round(float(np.median(times[half:])), 3),
        "round_s_slope_per_round": round(slope, 4),
    }


def _qt_wait(predicate: Callable[[], bool], timeout_s: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("the widget stayed busy")
        QApplication.processEvents()
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2, help="retrain steps per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--base", type=int, default=4, help="U-Net base width of the segmenter (16: the default)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("NAPARI_TOWER_CONFIG_DIR", tempfile.mkdtemp(prefix="soak-config-"))
    import napari

    viewer = napari.Viewer(show=False)
    _, widget = viewer.window.add_plugin_dock_widget("napari-tower", WIDGET)
    start = time.perf_counter()
    records = run_rounds(viewer, widget, args.rounds, _qt_wait, args.size, args.steps,
                         log=lambda s: print(s, file=sys.stderr, flush=True), base=args.base)
    result = {"cpu": cpu_name(), "torch_threads": args.threads, "size": args.size, "retrain_steps": args.steps,
              "base": args.base,
              "total_s": round(time.perf_counter() - start, 1), "summary": summarise(records), "records": records}
    viewer.close()
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
