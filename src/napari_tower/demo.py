"""`napari-tower demo`: the whole chain on the offline sample, headless or in napari."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig, PretrainConfig
from .data import from_array
from .samples import synthetic_nuclei

# Pretraining and fine-tuning steps of the demo (CLI and widget): a couple of minutes each on a CPU.
DEMO_STEPS = 150


def run_headless(pretrain_steps: int = DEMO_STEPS, finetune_steps: int = DEMO_STEPS, out: str | None = None,
                 quiet: bool = False, seed: int = 0, progress: Callable[[Any], None] | None = None) -> dict:
    """Pretrain TOWER on 4 unlabelled images, fine-tune on 1 labelled one, report metrics on 2 held-out images.

    `progress` is called with each training step's `Progress` (the CLI passes its progress bar); `quiet`
    silences it. The metrics line is printed either way.
    """
    from .segment import Predictor, evaluate, finetune
    from .train import pretrain

    folder = Path(out or tempfile.mkdtemp(prefix="napari-tower-demo-"))
    pairs = [synthetic_nuclei((256, 256), 40, seed=seed + s) for s in range(7)]
    unlabelled = from_array(np.stack([im for im, _ in pairs[:4]]), "sample", axes="ZYX")
    bar = None if quiet else progress
    t0 = time.perf_counter()
    model = ModelConfig(base=16)
    pre = pretrain([unlabelled], PretrainConfig(steps=pretrain_steps, batch=8, seed=seed, data=DataConfig(patch=128),
                                                model=model), folder / "tower.pt", bar)
    image, labels = pairs[4]
    seg = finetune([from_array(image, "labelled")], [labels[None]],
                   FinetuneConfig(steps=finetune_steps, batch=8, seed=seed, model=model), folder / "model.pt",
                   init=pre.checkpoint, callback=bar)
    predictor = Predictor(seg.checkpoint, PredictConfig(instances=True))
    preds = [predictor.predict(from_array(im, "test")).labels[0] for im, _ in pairs[5:]]
    metrics = evaluate(preds, [lab for _, lab in pairs[5:]])
    metrics["seconds"] = time.perf_counter() - t0
    metrics["folder"] = str(folder)
    m = metrics["mean"]
    print(f"demo: Dice {m['dice']:.3f}  object F1@0.5 {m.get('f1', float('nan')):.3f}  "
          f"AP {m.get('ap', float('nan')):.3f}  in {metrics['seconds']:.0f} s; models in {folder}")
    return metrics


# The widget's settings for a first look on a CPU: a couple of minutes per step, not hours.
# In the form of the remembered settings (napari/settings.py): each section's config as a dict.
GUI_PRESET = {"version": 2, "scope": "whole stack",
              "pretrain": {"method": "tower", "steps": DEMO_STEPS, "batch": 8, "device": "auto", "data": {"patch": 128},
                           "model": {"base": 16}},
              "finetune": {"steps": DEMO_STEPS}, "retrain": {"steps": 30}, "predict": {"instances": True}}


def demo_stack(planes: int = 4, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (planes, size, size) stack of synthetic nuclei and its instance labels (one plane per seed)."""
    pairs = [synthetic_nuclei((size, size), int(40 * (size / 256) ** 2), seed=seed + s) for s in range(planes)]
    return np.stack([im for im, _ in pairs]), np.stack([lab for _, lab in pairs])


def setup_viewer(viewer) -> object:  # noqa: ANN001 - a napari.Viewer; napari is only imported by the caller
    """Fill a napari viewer for the demo and return the docked widget.

    Adds the sample stack and an "annotations" Labels layer with only its first plane
    labelled (the widget fine-tunes on annotated planes and predicts the others),
    docks the napari-tower widget with `GUI_PRESET` and points it at both layers.
    """
    stack, truth = demo_stack()
    annotations = np.zeros_like(truth)
    annotations[0] = truth[0]
    image = viewer.add_image(stack, name="nuclei")
    labels = viewer.add_labels(annotations, name="annotations", opacity=0.5)
    _, widget = viewer.window.add_plugin_dock_widget("napari-tower", "TOWER segmentation")
    widget.apply_settings(GUI_PRESET)
    widget.segment.image.set_layer(image)
    widget.segment.labels.set_layer(labels)
    widget.show_info("Demo: press Pretrain (2. Pretrain), then Fine-tune and Predict (4. Segment); fix a plane of "
                     "the prediction with the paint tools, then Retrain from corrections (5.).")
    return widget


def run_gui() -> int:  # the blocking part (napari.run) is exercised by tests/cli/test_demo.py with run stubbed
    try:
        import napari
    except ImportError:
        print("error: napari is not installed: pip install 'napari-tower[napari]'", file=sys.stderr)
        return 2
    viewer = napari.Viewer(title="napari-tower demo")
    setup_viewer(viewer)
    napari.run()
    return 0
