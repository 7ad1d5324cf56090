"""Self-supervised pretraining: images + PretrainConfig -> a pretrained `ModelBundle`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import PretrainConfig, from_dict, loop_steps, to_dict
from ..data import Image, Normalisation, PatchSampler, Source, VolumeSampler, compute_normalisation
from ..errors import CheckpointError, TowerError
from ..methods import Method, build_method
from ..model_bundle import ModelBundle
from .distributed import Distributed
from .engine import (
    Loop,
    Optimise,
    Progress,
    ProgressCallback,
    StopCheck,
    autocast,
    batch_to_device,
    cosine_lr_at,
    prepare_module,
    resolve_device,
    step_rng,
)

VAL_SEED_OFFSET = 2**31 - 1


@dataclass
class PretrainResult:
    """What a finished (or stopped) run leaves: the model and the file it was written to."""

    checkpoint: ModelBundle
    path: Path | None
    last: Progress
    rank: int = 0  # under torchrun: this process's rank (only rank 0 writes `path`)
    world_size: int = 1


def pretrain_normalisation(images: Sequence[Image], cfg: PretrainConfig) -> list[Normalisation]:
    return [compute_normalisation(im.data, im.source, cfg.data.low_percentile, cfg.data.high_percentile)
            for im in images]


def model_normalisation(norms: Sequence[Normalisation]) -> Normalisation:
    """The statistics stored with the model: the per-channel median over the training images."""
    import numpy as np

    return Normalisation(np.median([n.low for n in norms], axis=0).tolist(),
                         np.median([n.high for n in norms], axis=0).tolist())


def method_state(method: Method) -> dict[str, Any]:
    return {k: v.detach().cpu() for k, v in method.state_dict().items()}


def load_unet_weights(module: torch.nn.Module, bundle: ModelBundle, parts: Sequence[str], source: str) -> list[str]:
    """Copy `unet.<part>.*` weights from a model into `module` (which has a `unet`); returns the parts loaded."""
    state = bundle.state
    wanted = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.") and k.split(".")[1] in parts}
    if not wanted:
        raise CheckpointError(f"{source} holds no U-Net weights for {', '.join(parts)}")
    own = module.unet.state_dict()
    mismatched = [k for k, v in wanted.items() if k not in own or own[k].shape != v.shape]
    flat = [k for k in mismatched if k in own and own[k].ndim != wanted[k].ndim]
    if flat:  # 4-D against 5-D convolution weights: a 2D model into a 3D one or back (issue 17)
        theirs, ours = ("3D", "2D") if wanted[flat[0]].ndim > own[flat[0]].ndim else ("2D", "3D")
        raise CheckpointError(f"{source} is a {theirs} model and this one is {ours}: use a {ours} model "
                              f"(--dims {ours.lower()} when it was made), or start without it")
    if mismatched:
        raise CheckpointError(
            f"{source} was trained with another model shape (e.g. {mismatched[0]}): "
            "use the same --base, depth and channel count, or start without it"
        )
    module.unet.load_state_dict(wanted, strict=False)
    return sorted({k.split(".")[0] for k in wanted})


def pretrain_sampler(sources: Sequence[Source], cfg: PretrainConfig) -> PatchSampler | VolumeSampler:
    """2D patches, or (issue 17) (patch_z, patch, patch) sub-volumes when the model is 3D."""
    if cfg.model.dims == "3d":
        return VolumeSampler(sources, cfg.data.patch, cfg.data.patch_z, cfg.data.structure_prior,
                             cfg.data.prior_floor)
    return PatchSampler(sources, cfg.data.patch, cfg.data.structure_prior, cfg.data.prior_floor)


def check_patch_fits(method: Method, cfg: PretrainConfig) -> None:
    """Refuse a 3D patch depth the U-Net's z pooling cannot divide (the skips would not line up)."""
    if cfg.model.dims != "3d":
        return
    need = method.unet.multiples[0]
    if cfg.data.patch_z % need:
        fit = max(need, cfg.data.patch_z // need * need)
        raise TowerError(f"a 3D patch depth of {cfg.data.patch_z} slices does not fit a depth-{cfg.model.depth} "
                         f"U-Net that pools z {need} times over: use --patch-z {fit} (a multiple of {need})")


def pretrain(
    images: Sequence[Image],
    cfg: PretrainConfig,
    out: str | os.PathLike | None = None,
    callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    resume: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
) -> PretrainResult:
    """Pretrain a U-Net on `images` with `cfg.method`, writing checkpoints to `out`.

    `resume` continues a run from its checkpoint (same config, same schedule);
    `init` warm-starts the network from an earlier checkpoint with a fresh schedule.

    Under `torchrun` (RANK/WORLD_SIZE set) every rank trains on its own patches with
    `cfg.batch` per rank, gradients are averaged (DistributedDataParallel), contrastive
    negatives come from all ranks, and only rank 0 writes `out` and calls `callback`.
    """
    start = 0
    history: dict[str, list[float]] = {}
    resumed: ModelBundle | None = None
    if resume is not None:
        resumed = ModelBundle.load(resume, "pretrained")
        saved = from_dict(PretrainConfig, resumed.config)
        saved.steps, saved.device = cfg.steps or saved.steps, cfg.device
        cfg = saved
        start = resumed.step
        history = {k: list(v) for k, v in resumed.history.items()}
    if not images:
        raise TowerError("no images given: pass at least one image to pretrain on")
    cfg.model.in_channels = images[0].channels
    cfg.validate()
    world = Distributed.from_environment()
    device = world.start(cfg.device) if world.enabled else resolve_device(cfg.device)
    try:
        result = _pretrain(images, cfg, out, callback, should_stop, resumed, init, start, history, world, device)
        world.barrier()
        return result
    finally:
        world.close()


def _pretrain(images: Sequence[Image], cfg: PretrainConfig, out: str | os.PathLike | None,
              callback: ProgressCallback | None, should_stop: StopCheck | None, resumed: ModelBundle | None,
              init: str | os.PathLike | None, start: int, history: dict[str, list[float]], world: Distributed,
              device: torch.device) -> PretrainResult:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank

    norms = pretrain_normalisation(images, cfg)
    sampler = pretrain_sampler([Source(im, n) for im, n in zip(images, norms)], cfg)
    method = build_method(cfg)
    check_patch_fits(method, cfg)
    method = prepare_module(method.to(device), device, cfg.accel)
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    optimise = Optimise(optimizer, device, cfg.mixed_precision, cfg.accel)
    if resumed is not None:
        method.load_state_dict(resumed.state)
        if resumed.optimizer is not None:
            optimizer.load_state_dict(resumed.optimizer)
    elif init is not None:
        load_unet_weights(method, ModelBundle.load(init), ("encoder", "decoder"), str(init))

    model = world.wrap(method)  # DDP under torchrun; the method itself otherwise

    # Every rank validates on the same batch with the same weights, so early-stop decisions agree.
    val_rng, _ = step_rng(cfg.seed, VAL_SEED_OFFSET)
    val_batch = batch_to_device(sampler.sample(cfg.batch * max(1, cfg.val_batches), val_rng)["image"],
                                device, cfg.accel)
    norm = model_normalisation(norms)

    def train_step(step: int) -> dict[str, float]:
        method.train()
        rng, gen = step_rng(cfg.seed, step, world.rank)  # each rank draws its own patches
        x = batch_to_device(sampler.sample(cfg.batch, rng)["image"], device, cfg.accel)
        cosine_lr_at(optimizer, cfg.lr, loop.fraction(step))
        with autocast(device, cfg.mixed_precision, cfg.accel.amp_dtype, cfg.accel.cpu_bf16):
            losses = model(x, gen)
        optimise(losses["loss"])
        method.after_step(loop.fraction(step))  # steps or time: the momentum schedules follow the budget
        return world.mean({k: float(v.detach()) for k, v in losses.items()})

    def validate() -> float:
        method.eval()
        gen = torch.Generator().manual_seed(cfg.seed + VAL_SEED_OFFSET)
        with torch.no_grad(), autocast(device, cfg.mixed_precision, cfg.accel.amp_dtype, cfg.accel.cpu_bf16):
            vals = [method.validation_loss(chunk, gen) for chunk in val_batch.split(cfg.batch)]
        return float(sum(vals) / len(vals))

    def bundle(step: int) -> ModelBundle:
        return ModelBundle(
            kind="pretrained", method=cfg.method, transfers=list(method.transfers), config=to_dict(cfg),
            normalisation=norm, state=method_state(method), optimizer=optimizer.state_dict(), step=step,
            history=loop.history,
            world_size=world.world_size,  # cfg.batch is per rank: the global batch is batch x world_size
        )

    saved: ModelBundle | None = None

    def save(step: int, final: bool) -> None:
        nonlocal saved
        saved = bundle(step)
        if out is not None and world.is_main:
            saved.save(out)

    stop = should_stop
    if world.enabled:
        # A signal may reach one rank only; all ranks must stop at the same step.
        def stop() -> bool:
            return world.any(should_stop is not None and should_stop())

    loop = Loop("pretrain", loop_steps(cfg.steps, cfg.minutes), cfg.batch, train_step, save, validate, cfg.val_every,
                cfg.checkpoint_every,
                cfg.early_stop_patience, callback if world.is_main else None, stop, history,
                budget_s=cfg.minutes * 60)
    last = loop.run(start)
    assert saved is not None  # the loop always saves once at its end
    return PretrainResult(saved, Path(out) if out is not None else None, last, world.rank, world.world_size)
