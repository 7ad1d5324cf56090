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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import AcceleratorConfig
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
        raise TowerError("device 'cuda' was asked for but torch sees no CUDA GPU: "
                         "use --device cpu or install a CUDA build of torch")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TowerError("device 'mps' was asked for but is not available: use --device cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates it, slowly."""
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def autocast(device: torch.device, enabled: bool, dtype: str = "bfloat16",
             cpu_bf16: bool = False) -> contextlib.AbstractContextManager:
    """bf16 (or fp16) autocast on CUDA when `enabled`; bf16 on a CPU only when `cpu_bf16` and it is native there."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=getattr(torch, dtype))
    if cpu_bf16 and device.type == "cpu" and cpu_has_native_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last_format(module: torch.nn.Module) -> torch.memory_format:
    """channels_last for a 2D model, channels_last_3d for one with 3D convolutions (5-D weights need it)."""
    three_d = any(isinstance(m, torch.nn.Conv3d) for m in module.modules())
    return torch.channels_last_3d if three_d else torch.channels_last


def prepare_module(module: torch.nn.Module, device: torch.device, accel: AcceleratorConfig) -> torch.nn.Module:
    """Apply the GPU-path options to a model already on `device`: channels_last and torch.compile.

    channels_last only on CUDA (tensor-core convolutions want NHWC, or NDHWC in 3D; on CPU it only adds
    copies). `compile` compiles the U-Net in place (`nn.Module.compile`), so checkpoint keys do not change.
    """
    if accel.channels_last and device.type == "cuda":
        module.to(memory_format=channels_last_format(module))
    if accel.compile:
        getattr(module, "unet", module).compile()
    return module


def batch_to_device(array: np.ndarray, device: torch.device, accel: AcceleratorConfig) -> torch.Tensor:
    """A numpy batch as a tensor on `device`: pinned and copied asynchronously, NHWC where the model is."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor.to(device)
    if accel.pin_memory:
        tensor = tensor.pin_memory()
    tensor = tensor.to(device, non_blocking=accel.pin_memory)
    if accel.channels_last and tensor.ndim in (4, 5):
        layout = torch.channels_last if tensor.ndim == 4 else torch.channels_last_3d
        tensor = tensor.contiguous(memory_format=layout)
    return tensor


class Optimise:
    """backward + optimiser step, with loss scaling when training in float16 on CUDA (bf16 needs none)."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, mixed_precision: bool,
                 accel: AcceleratorConfig) -> None:
        self.optimizer = optimizer
        fp16 = mixed_precision and device.type == "cuda" and accel.amp_dtype == "float16"
        scaler = getattr(torch.amp, "GradScaler", None)  # torch >= 2.3; torch.cuda.amp before
        self.scaler = (scaler("cuda") if scaler is not None else torch.cuda.amp.GradScaler()) if fp16 else None

    def __call__(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def step_rng(seed: int, step: int, rank: int = 0) -> tuple[np.random.Generator, torch.Generator]:
    """Random sources for one step, derived from (seed, step) so resuming replays the same stream.

    Each distributed rank gets its own stream (rank 0's is the single-process one), so ranks draw
    different patches and corruptions: the sampler is sharded by rank.
    """
    if rank == 0:
        return np.random.default_rng([seed, step]), torch.Generator().manual_seed(seed * 1_000_003 + step)
    # torch's CPU generator keeps only 32 bits of a seed: hash (seed, step, rank) into them.
    torch_seed = int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
    return np.random.default_rng([seed, step, rank]), torch.Generator().manual_seed(torch_seed)


def cosine_lr_at(optimizer: torch.optim.Optimizer, base_lr: float, fraction: float, warmup: float = 0.0) -> None:
    """Cosine decay from `base_lr` to 0 over a run's progress `fraction` (steps done, or time used, over the total).

    The first `warmup` share of the run ramps linearly up to the cosine curve, so freshly initialised heads do not
    push large gradients through pretrained layers. A parameter group's `lr_scale` (default 1) multiplies its rate.
    """
    f = min(max(fraction, 0.0), 1.0)
    lr = base_lr * 0.5 * (1 + math.cos(math.pi * f))
    if warmup > 0 and f < warmup:
        lr *= f / warmup
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


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
    # > 0: a time budget. The run ends when this much wall time is used (`total` is then only a cap), and the
    # schedule follows the time used, so a run given 2 minutes anneals fully in 2 minutes on any machine.
    budget_s: float = 0.0
    _t0: float = field(default=0.0, init=False, repr=False)

    def fraction(self, step: int) -> float:
        """How far through its schedule the run is at `step`: by time under a budget, else by steps."""
        if self.budget_s > 0:
            return min(1.0, (time.perf_counter() - self._t0) / self.budget_s) if self._t0 else 0.0
        return min(step, self.total) / max(1, self.total)

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
        t0 = self._t0 = time.perf_counter()
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
            if self.validate is not None and self.val_every > 0 and (
                    (step + 1) % self.val_every == 0 or step + 1 == self.total):
                val = self.validate()
                if val < self.best_val - 1e-6:
                    self.best_val, bad_rounds = val, 0
                else:
                    bad_rounds += 1
            self._record(step + 1, losses, val)
            out_of_time = self.budget_s > 0 and elapsed >= self.budget_s
            if self.budget_s > 0:  # the total a budget allows, estimated from the rate so far
                total = step + 1 if out_of_time else min(self.total, step + 1 + int(rate * (self.budget_s - elapsed)))
                eta = max(0.0, self.budget_s - elapsed)
            else:
                total, eta = self.total, (self.total - step - 1) / rate if rate > 0 else 0.0
            last = Progress(self.phase, step + 1, total, losses, rate * self.batch, elapsed, eta, val)
            if out_of_time:
                self.save(step + 1, True)
                self._emit(last)
                return self._emit(Progress(self.phase, step + 1, step + 1, losses, last.patches_per_s, elapsed, 0.0,
                                           val, done=True, message=f"time budget of {self.budget_s:.0f} s used "
                                           f"after {step + 1} steps"))
            if self.checkpoint_every > 0 and (step + 1) % self.checkpoint_every == 0 and step + 1 < self.total:
                self.save(step + 1, False)
            self._emit(last)
            if self.patience and bad_rounds >= self.patience:
                self.save(step + 1, True)
                return self._emit(Progress(self.phase, step + 1, self.total, losses, last.patches_per_s, elapsed, 0.0,
                                           val, done=True,
                                           message=f"early stop at step {step + 1}: validation stopped improving"))
        self.save(self.total, True)
        return self._emit(Progress(self.phase, self.total, self.total, last.losses, last.patches_per_s,
                                   time.perf_counter() - t0, 0.0, last.val_loss, done=True, message="finished"))

    def _emit(self, p: Progress) -> Progress:
        if self.callback is not None:
            self.callback(p)
        return p

