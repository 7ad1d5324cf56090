"""`napari-tower demo`: the whole chain on the offline sample, headless or in napari."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig, PretrainConfig
from .data import from_array
from .samples import synthetic_nuclei


def run_headless(pretrain_steps: int = 150, finetune_steps: int = 150, out: str | None = None,
                 quiet: bool = False, seed: int = 0) -> dict:
    """Pretrain TOWER on 4 unlabelled images, fine-tune on 1 labelled one, report metrics on 2 held-out images."""
    from .cli import ProgressBar
    from .segment import Predictor, evaluate, finetune
    from .train import pretrain

    folder = Path(out or tempfile.mkdtemp(prefix="napari-tower-demo-"))
    pairs = [synthetic_nuclei((256, 256), 40, seed=seed + s) for s in range(7)]
    unlabelled = from_array(np.stack([im for im, _ in pairs[:4]]), "sample", axes="ZYX")
    bar = ProgressBar(quiet)
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


def run_gui() -> int:  # pragma: no cover - interactive
    try:
        import napari
    except ImportError:
        print("error: napari is not installed: pip install 'napari-tower[napari]'", file=sys.stderr)
        return 2
    image, _ = synthetic_nuclei((512, 512), 120)
    viewer = napari.Viewer(title="napari-tower demo")
    viewer.add_image(image, name="nuclei")
    viewer.window.add_plugin_dock_widget("napari-tower")
    napari.run()
    return 0
