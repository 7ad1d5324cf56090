"""Default step counts sized from this machine's measured speed (`train.sizing`), in the widget.

Each fine-tune and retrain leaves its seconds per step in `LoopState.step_timing` (remembered with the
settings). A step count the user never changed (still the config's default) is then set to what fits the time
budget on this machine, with a tooltip that says so; a count the user set is never touched.
"""

from __future__ import annotations

from typing import Any

from ..config import FinetuneConfig, RetrainConfig
from ..train.engine import Progress
from ..train.sizing import FINETUNE_BUDGET_S, RETRAIN_BUDGET_S, StepTiming
from .host import Tower


def _sized(control: Any, default: int, steps: int, budget_s: float, timing: StepTiming) -> None:
    base = str(control.tooltip or "").split("\n\nSized")[0]
    # Untouched: the default, a count sized before (this session, or restored with the timing that sized it).
    if control.value in (default, steps, getattr(control, "_sized_to", None)):
        control.value = steps
        control._sized_to = steps  # a later timing may size it again, as long as the user leaves it alone
        control.tooltip = (f"{base}\n\nSized to about {budget_s / 60:.3g} min on this machine: "
                           f"{timing.seconds:.2f} s per step measured at patch {timing.patch}, batch {timing.batch}.")


def size_step_defaults(w: Tower, upcoming: FinetuneConfig) -> None:
    """Set the fine-tune and retrain step counts left at their defaults from the remembered timing, when it was
    measured at the settings of the `upcoming` run (`training.finetune_config` of the widget)."""
    timing = w.loop.step_timing
    if timing is None or not timing.fits(upcoming):
        return
    _sized(w.segment.steps, FinetuneConfig().steps, timing.steps_in(FINETUNE_BUDGET_S), FINETUNE_BUDGET_S, timing)
    _sized(w.correct.steps, RetrainConfig().steps, timing.steps_in(RETRAIN_BUDGET_S, least=10), RETRAIN_BUDGET_S,
           timing)


def remember_step_time(w: Tower, last: Progress, cfg: FinetuneConfig) -> None:
    """Keep a finished run's seconds per step (GUI thread) and size the untouched step counts from it."""
    timing = StepTiming.of_run(last, cfg)
    if timing is None:
        return
    w.loop.step_timing = timing
    size_step_defaults(w, cfg)
