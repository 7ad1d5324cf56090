"""Training lengths sized from this machine's measured speed (issue 18).

A fixed step count takes seconds on a GPU and many minutes on an old laptop CPU. Every fine-tune or retrain
measures its own seconds per step; `StepTiming` keeps that figure with the settings it was measured at, and
`steps_in` turns a time budget into a step count. The widget remembers the last timing and sizes the default
step counts of fine-tuning (`FINETUNE_BUDGET_S`) and retraining (`RETRAIN_BUDGET_S`) from it, so a user who
never touched them gets a fine-tune of about two minutes and a retrain round of about twenty seconds on
whatever machine they have.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..config import FinetuneConfig
from .engine import Progress

FINETUNE_BUDGET_S = 120.0  # a useful first model in minutes on a laptop CPU
RETRAIN_BUDGET_S = 20.0  # a correct-and-retrain round the user waits for (the loop's goal is <= 30 s)
MIN_TIMED_STEPS = 10  # fewer steps say more about start-up than about the step


def _speed_settings(cfg: FinetuneConfig) -> tuple[int, int, int, str, str]:
    """What decides a step's time: (patch, batch, width, "2d"/"3d", device), in `StepTiming`'s field order."""
    return cfg.data.patch, cfg.batch, cfg.model.base, "3d" if cfg.model.spatial_dims == 3 else "2d", cfg.device


@dataclass(frozen=True)
class StepTiming:
    """Seconds per fine-tuning step, measured by a finished run, and the settings that decide it."""

    seconds: float
    patch: int
    batch: int
    base: int
    dims: str  # "2d" or "3d" (the model the run trained)
    device: str

    @classmethod
    def of_run(cls, last: Progress, cfg: FinetuneConfig) -> StepTiming | None:
        """The timing of a run that ended with `last` and had settings `cfg`; None when it ran too few steps."""
        if last.step < MIN_TIMED_STEPS or last.elapsed_s <= 0:
            return None
        return cls(last.elapsed_s / last.step, *_speed_settings(cfg))

    def fits(self, cfg: FinetuneConfig) -> bool:
        """Whether a run with `cfg` takes about as long per step (the same patch, batch, width, mode, device)."""
        return (self.patch, self.batch, self.base, self.dims, self.device) == _speed_settings(cfg)

    def steps_in(self, budget_s: float, least: int = 20, most: int = 5000) -> int:
        """The step count that takes about `budget_s` seconds, in tens, within [least, most]."""
        steps = round(budget_s / self.seconds / 10.0) * 10
        return max(least, min(most, steps))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> StepTiming | None:
        """A timing from remembered settings; None for anything that is not one."""
        if not isinstance(values, dict):
            return None
        try:
            timing = cls(float(values["seconds"]), int(values["patch"]), int(values["batch"]), int(values["base"]),
                         str(values["dims"]), str(values["device"]))
        except (KeyError, TypeError, ValueError):
            return None
        return timing if timing.seconds > 0 else None


__all__ = ["FINETUNE_BUDGET_S", "RETRAIN_BUDGET_S", "StepTiming"]
