"""Training for a time budget instead of a step count."""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig
from napari_tower.data import from_array
from napari_tower.segment import finetune
from napari_tower.train.engine import Loop, cosine_lr_at

from ..conftest import blobs


def test_a_budgeted_loop_stops_on_time_and_anneals_by_time():
    lrs: list[float] = []
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    def step(i: int) -> dict[str, float]:
        cosine_lr_at(opt, 1.0, loop.fraction(i))
        lrs.append(opt.param_groups[0]["lr"])
        time.sleep(0.02)
        return {"loss": 1.0}

    saved: list[tuple[int, bool]] = []
    loop = Loop("t", 1_000_000, 1, step, lambda s, final: saved.append((s, final)), budget_s=0.5,
                checkpoint_every=0)
    t0 = time.perf_counter()
    last = loop.run()
    took = time.perf_counter() - t0
    assert 0.5 <= took < 1.5
    assert last.done and "time budget" in last.message and last.step == len(lrs)
    assert saved[-1] == (last.step, True)
    assert lrs[0] > 0.999 and lrs[-1] < 0.1  # the schedule reached its end with the budget
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_finetune_for_minutes_runs_about_that_long():
    image, labels = blobs((96, 96))
    cfg = FinetuneConfig(steps=1, minutes=0.05, batch=2, device="cpu", val_every=0, checkpoint_every=0,
                         data=DataConfig(patch=64), model=ModelConfig(base=4, depth=2))
    t0 = time.perf_counter()
    result = finetune([from_array(image)], [labels[None]], cfg)
    took = time.perf_counter() - t0
    assert result.last.step > 1  # the budget, not steps=1, decided the length
    assert 2.5 < took < 15
    assert np.isfinite(result.last.losses["loss"])
