"""Training lengths sized from the measured seconds per step (issue 18: CPU defaults from the step time)."""

from __future__ import annotations

import pytest

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig
from napari_tower.data import from_array
from napari_tower.segment import finetune
from napari_tower.train.sizing import StepTiming

from ..conftest import blobs


def _cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{"steps": 12, "batch": 2, "device": "cpu", "val_fraction": 0.0,
                             "data": DataConfig(patch=32), "model": ModelConfig(base=4, depth=2), **kw})


def test_a_finished_run_gives_its_seconds_per_step():
    image, truth = blobs((64, 64), seed=3)
    cfg = _cfg()
    result = finetune([from_array(image)], [truth[None]], cfg)
    timing = StepTiming.of_run(result.last, cfg)
    assert timing is not None and timing.seconds == pytest.approx(result.last.elapsed_s / 12)
    assert (timing.patch, timing.batch, timing.base, timing.dims, timing.device) == (32, 2, 4, "2d", "cpu")
    assert timing.fits(cfg) and not timing.fits(_cfg(batch=4)) and not timing.fits(FinetuneConfig(device="cpu"))
    short = finetune([from_array(image)], [truth[None]], _cfg(steps=3))
    assert StepTiming.of_run(short.last, cfg) is None  # three steps time the start-up, not the step


def test_a_budget_becomes_a_step_count_in_tens_within_bounds():
    timing = StepTiming(0.27, 128, 8, 16, "2d", "cpu")
    assert timing.steps_in(120) == 440  # 444 steps of 0.27 s in two minutes
    assert timing.steps_in(20, least=10) == 70
    assert StepTiming(30.0, 128, 8, 16, "2d", "cpu").steps_in(120) == 20  # never fewer than `least`
    assert StepTiming(0.001, 128, 8, 16, "2d", "cuda").steps_in(120) == 5000  # nor more than `most`


def test_remembered_timings_round_trip_and_bad_ones_are_ignored():
    timing = StepTiming(0.31, 96, 4, 8, "3d", "auto")
    assert StepTiming.from_dict(timing.as_dict()) == timing
    for bad in (None, "0.3", {}, {**timing.as_dict(), "seconds": "fast"}, {**timing.as_dict(), "seconds": 0}):
        assert StepTiming.from_dict(bad) is None
