"""The training loop shared by pretraining and fine-tuning.

It owns what every run needs and nothing method-specific: the cosine
schedule, per-step seeding (so a resumed run draws the same batches as an
uninterrupted one), progress records through a callback, the stop flag
checked every step, validation, periodic and final checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..errors import TowerError


@dataclass
class Progress:
    """One record per step (and one final), rendered by the CLI bar and the widget."""

    phase: str
    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    patches_per_s: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float = 0.0
    val_loss: float | None = None
    done: bool = False
    stopped: bool = False
    message: str = ""


ProgressCallback = Callable[[Progress], None]
StopCheck = Callable[[], bool]


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TowerError("device 'cuda' was asked for but torch sees no CUDA GPU: use --device cpu or install a CUDA build of torch")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TowerError("device 'mps' was asked for but is not available: use --device cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (CPU autocast is slower for convolutions)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_rng(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """Random sources for one step, derived from (seed, step) so resuming replays the same stream."""
    return np.random.default_rng([seed, step]), torch.Generator().manual_seed(seed * 1_000_003 + step)


def cosine_lr(optimizer: torch.optim.Optimizer, base_lr: float, step: int, total: int) -> None:
    lr = base_lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total)))
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class Loop:
    """Runs `train_step(step) -> losses` from `start` to `total`, with validation, checkpoints and stop."""

    phase: str
    total: int
    batch: int
    train_step: Callable[[int], dict[str, float]]
    save: Callable[[int, bool], None]  # (step, final)
    validate: Callable[[], float] | None = None
    val_every: int = 50
    checkpoint_every: int = 100
    patience: int = 0
    callback: ProgressCallback | None = None
    should_stop: StopCheck | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    best_val: float = math.inf

    def _record(self, step: int, losses: dict[str, float], val: float | None) -> None:
        self.history.setdefault("step", []).append(float(step))
        for k, v in losses.items():
            self.history.setdefault(k, []).append(float(v))
        if val is not None:
            self.history.setdefault("val_step", []).append(float(step))
            self.history.setdefault("val", []).append(float(val))

    def run(self, start: int = 0) -> Progress:
        # Denormal floats (tiny Adam moments, masked activations) slow CPU kernels several-fold;
        # the flag is process-visible state, so it is restored when the run ends.
        torch.set_flush_denormal(True)
        try:
            return self._run(start)
        finally:
            torch.set_flush_denormal(False)

    def _run(self, start: int) -> Progress:
        t0 = time.perf_counter()
        bad_rounds = 0
        last = Progress(self.phase, start, self.total)
        for step in range(start, self.total):
            if self.should_stop is not None and self.should_stop():
                self.save(step, True)
                return self._emit(Progress(self.phase, step, self.total, last.losses, last.patches_per_s,
                                           time.perf_counter() - t0, 0.0, None, done=True, stopped=True,
                                           message=f"stopped at step {step}; checkpoint kept"))
            losses = self.train_step(step)
            if not all(math.isfinite(v) for v in losses.values()):
                self.save(step, True)
                raise TowerError(
                    f"training diverged at step {step + 1} (loss {losses}): lower the learning rate or check the images"
                )
            done_steps = step + 1 - start
            elapsed = time.perf_counter() - t0
            rate = done_steps / elapsed if elapsed > 0 else 0.0
            val = None
            if self.validate is not None and self.val_every > 0 and ((step + 1) % self.val_every == 0 or step + 1 == self.total):
                val = self.validate()
                if val < self.best_val - 1e-6:
                    self.best_val, bad_rounds = val, 0
                else:
                    bad_rounds += 1
            self._record(step + 1, losses, val)
            last = Progress(self.phase, step + 1, self.total, losses, rate * self.batch, elapsed,
                            (self.total - step - 1) / rate if rate > 0 else 0.0, val)
            if self.checkpoint_every > 0 and (step + 1) % self.checkpoint_every == 0 and step + 1 < self.total:
                self.save(step + 1, False)
            self._emit(last)
            if self.patience and bad_rounds >= self.patience:
                self.save(step + 1, True)
                return self._emit(Progress(self.phase, step + 1, self.total, losses, last.patches_per_s, elapsed, 0.0,
                                           val, done=True, message=f"early stop at step {step + 1}: validation stopped improving"))
        self.save(self.total, True)
        return self._emit(Progress(self.phase, self.total, self.total, last.losses, last.patches_per_s,
                                   time.perf_counter() - t0, 0.0, last.val_loss, done=True, message="finished"))

    def _emit(self, p: Progress) -> Progress:
        if self.callback is not None:
            self.callback(p)
        return p

