"""Fine-tuning a segmenter from a few labels (spec section 6)."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import FinetuneConfig, loop_steps, to_dict
from ..data import Image, PatchSampler, Source, compute_normalisation, median_level
from ..errors import TowerError
from ..model_bundle import ModelBundle
from ..train.engine import (
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
from ..train.pretrain import load_unet_weights, model_normalisation
from . import finetune3d as vol
from .instance_heads import head_for, resolve_head
from .losses import segmentation_loss
from .model import Segmenter
from .shape_heads import InstanceHead
from .shape_training import ShapeObjective, instance_ids
from .targets import check_labels, encode_targets, infer_target_kind, n_classes
from .zoom import zoomed_sources

StepHook = Callable[[int, torch.nn.Module], None]  # (steps done, the model being trained)


@dataclass
class FinetuneResult:
    """What a finished (or stopped) run leaves: the segmenter, the file it was written to, the best Dice."""

    checkpoint: ModelBundle
    path: Path | None
    last: Progress
    best_val_dice: float | None


def select_fraction(n: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded subset of `n` items; subsets for smaller fractions nest inside larger ones."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: max(1, math.ceil(fraction * n))])


def _planes(images: Sequence[Image], labels: Sequence[np.ndarray], weights: Sequence[np.ndarray | None] | None,
            sparse: bool = False):
    """Split everything into single planes: the unit of label fractions and validation splits.

    A plane that carries no loss is left out: all weights 0, or, for sparse labels, nothing painted (so a
    validation split cannot take the one painted plane of a stack and leave training nothing to learn).
    """
    out = []
    for i, (im, lab) in enumerate(zip(images, labels)):
        w = weights[i] if weights is not None else None
        for p in range(im.shape[0]):
            plane_w = None if w is None else np.asarray(w[p: p + 1], np.float32)
            if (sparse and not np.any(lab[p: p + 1])) or (plane_w is not None and not plane_w.any()):
                continue
            out.append((i, p, lab[p: p + 1], plane_w))
    if not out:
        raise TowerError("the labels annotate no pixel: paint at least one object or background region")
    return out


def _param_groups(model: torch.nn.Module, pretrained_parts: Sequence[str], scale: float) -> list[dict]:
    """Two optimiser groups: the U-Net parts loaded from pretraining (learning rate x `scale`) and the rest."""
    prefixes = tuple(f"unet.{p}." for p in pretrained_parts)
    named = list(model.named_parameters())
    pretrained = [p for n, p in named if prefixes and n.startswith(prefixes)]
    fresh = [p for n, p in named if not (prefixes and n.startswith(prefixes))]
    groups = [{"params": fresh, "lr_scale": 1.0}]
    if pretrained:
        groups.append({"params": pretrained, "lr_scale": scale})
    return groups


def finetune(
    images: Sequence[Image],
    labels: Sequence[np.ndarray],
    cfg: FinetuneConfig,
    out: str | os.PathLike | None = None,
    init: str | os.PathLike | ModelBundle | None = None,
    weights: Sequence[np.ndarray | None] | None = None,
    callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    transfer: Sequence[str] | None = None,
    on_step: StepHook | None = None,
) -> FinetuneResult:
    """Train a segmenter on (image, labels) pairs, labels as (planes, Y, X) integers.

    With ``cfg.model.dims == "3d"`` the model is a 3D U-Net trained on (patch_z, patch, patch) patches of the
    images' volumes (`Image.volume`); labels keep the planes' order, a slice without any label is
    unannotated (the user painted others), and every patch holds annotated voxels (`finetune3d`).

    `init` is a pretraining checkpoint (its transferable parts are loaded), a
    segmenter checkpoint (training continues, e.g. from user corrections), or None
    for random initialisation. `weights` give per-pixel loss weights.
    `transfer` overrides which U-Net parts a pretraining checkpoint contributes (default: `cfg.transfer`,
    whose "auto" means the parts the pretraining method transfers).
    `on_step(step, model)` runs in the training thread after each step (e.g. a live preview of the model being
    trained); it may run the model in eval mode but must leave its weights and mode as they were.
    """
    if transfer is None and cfg.transfer != "auto":
        transfer = tuple(cfg.transfer.split("+"))
    if len(images) != len(labels) or not images:
        raise TowerError(f"got {len(images)} image(s) and {len(labels)} label image(s): give one label image per image")
    channels = {im.channels for im in images}
    if len(channels) > 1:
        raise TowerError(f"images have different channel counts {sorted(channels)}: use images with the same channels")
    cfg.model.in_channels = channels.pop()
    for im in images:
        if min(im.shape[2:]) < 16:
            raise TowerError(f"{im.source} is only {im.shape[2]} x {im.shape[3]} px: fine-tuning needs images of at "
                             "least 16 x 16 px (the U-Net halves them four times); use larger images or crops")

    ckpt: ModelBundle | None = None
    if init is not None:
        ckpt = init if isinstance(init, ModelBundle) else ModelBundle.load(init)
    # A segmenter learning from corrections may be shown frames with nothing in them (a user erased its false
    # objects on an empty frame): only a new model needs objects to learn from.
    continuing = ckpt is not None and ckpt.kind == "segmenter"
    for im, lab in zip(images, labels):
        check_labels(lab, im.shape, im.source, foreground=not continuing)
    kind = cfg.target if cfg.target != "auto" else infer_target_kind(list(labels))
    head_name = cfg.instance_head
    if ckpt is not None and ckpt.kind == "segmenter":
        # A segmenter continues with its own target and head (sparse instance scribbles train an instance model).
        kind = "sparse_instance" if cfg.target == "sparse_instance" and ckpt.target == "instance" else str(ckpt.target)
        head_name = ckpt.instance_head or "boundary"
        cfg.model.base, cfg.model.depth = ckpt.base, ckpt.depth
        if ckpt.in_channels != cfg.model.in_channels:
            raise TowerError(
                f"the model was trained on {ckpt.in_channels}-channel images but these have "
                f"{cfg.model.in_channels}: use images with the same channels as the model's"
            )
    elif ckpt is not None:
        if ckpt.in_channels != cfg.model.in_channels:
            raise TowerError(
                f"the pretrained model was trained on {ckpt.in_channels}-channel images but these have "
                f"{cfg.model.in_channels}: pretrain on images like these, or convert them to match"
            )
        cfg.model.base, cfg.model.depth = ckpt.base, ckpt.depth
    cfg.validate()
    dims = cfg.model.spatial_dims
    head_name = resolve_head(head_name, dims)
    if ckpt is not None:
        vol.check_dims(ckpt, dims, str(init) if not isinstance(init, ModelBundle) else "the model")
    head = head_for(head_name) if kind in ("instance", "sparse_instance") else None
    if dims == 3:
        vol.check_volumes(images)
        vol.check_head(kind, head)
    if kind == "sparse_instance" and head is None:
        raise TowerError("sparse instance labels need a shape-aware instance head: choose --instance-head capped, "
                         "distance or stardist (the boundary head learns from dense labels only)")
    # Shape heads compute their targets from the instance ids themselves (shape_training.ShapeObjective).
    if head is not None:
        targets = list(labels)
    elif dims == 3:
        targets = [vol.volume_targets(np.asarray(lab), im.z_size, kind) for im, lab in zip(images, labels)]
    else:
        targets = [encode_targets(lab, kind) for lab in labels]
    classes = head.channels if head is not None else n_classes(kind, targets)
    if ckpt is not None and ckpt.kind == "segmenter":
        known = int(ckpt.classes)
        if classes > known and kind in ("semantic", "sparse"):
            raise TowerError(
                f"the labels use {classes - 1} classes but the model knows {known - 1}: "
                "use label ids the model was trained with, or fine-tune a new model from a pretraining checkpoint"
            )
        classes = known

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    pools, patch_z = vol.volume_geometry(cfg, images, ckpt) if dims == 3 else (None, 1)
    kernels = cfg.model.kernels(cfg.data.patch_z) if dims == 3 else None
    model = Segmenter(cfg.model.in_channels, classes, cfg.model.base, cfg.model.depth, dims, pools, kernels)
    init_method = "scratch"
    if ckpt is not None and ckpt.kind == "segmenter":
        model.load_state_dict(ckpt.state)
        init_method = ckpt.init_method if ckpt.init_method is not None else "segmenter"
    loaded: list[str] = []
    if ckpt is not None and ckpt.kind != "segmenter":
        parts = ckpt.transfers if ckpt.transfers is not None else ("encoder", "decoder")
        loaded = load_unet_weights(model, ckpt, tuple(transfer or parts), str(init))
        init_method = str(ckpt.method)
    prepare_module(model.to(device), device, cfg.accel)

    norms = [compute_normalisation(im.data, im.source, cfg.data.low_percentile, cfg.data.high_percentile)
             for im in images]
    # The units that label fractions and validation split: planes in 2D, volumes in 3D.
    if dims == 3:
        planes = (vol.shape_units(images, labels, weights, head, cfg.model.voxel_size) if head is not None
                  else vol.volume_units(images, targets, weights))
    else:
        planes = _planes(images, targets, weights, kind in ("sparse", "sparse_instance"))
    chosen = [planes[i] for i in select_fraction(len(planes), cfg.fraction, cfg.seed)]
    n_val = round(cfg.val_fraction * len(chosen)) if len(chosen) >= 3 else 0
    val_idx = set(np.random.default_rng(cfg.seed + 1).permutation(len(chosen))[:n_val].tolist())
    train_planes = [c for k, c in enumerate(chosen) if k not in val_idx]
    val_planes = [c for k, c in enumerate(chosen) if k in val_idx]

    def sources(items) -> list[Source]:
        # Planes stay where they are (zarr, dask, memmap): the sampler reads only the patches it draws.
        return [Source(images[i].select_planes([p]), norms[i], t, w) for i, p, t, w in items]

    patch = min(cfg.data.patch, *(min(images[i].shape[2:]) // 16 * 16 for i, _, _, _ in chosen))
    # Uniform draws (the structure prior is for pretraining): background is seen as often as the image holds it.
    if dims == 3:
        sampler = vol.volume_sampler(images, norms, train_planes, patch, patch_z, cfg)
    elif head is not None:
        sampler = shape_objective(head, images, norms, train_planes, patch, kind == "sparse_instance",
                                  intensity=cfg.intensity_jitter)
    else:
        # Scaled copies of the labelled planes (issue 21): objects of other sizes than the painted ones.
        copies = zoomed_sources(images, norms, labels, train_planes, kind, cfg.zoom, patch, cfg.seed)
        sampler = PatchSampler(sources(train_planes) + copies, patch, structure_prior=False,
                               intensity=cfg.intensity_jitter)
    val_batch = None
    if val_planes:
        vs = (vol.volume_sampler(images, norms, val_planes, patch, patch_z, cfg, augment=False) if dims == 3
              else shape_objective(head, images, norms, val_planes, patch, kind == "sparse_instance", augment=False)
              if head is not None else PatchSampler(sources(val_planes), patch, structure_prior=False, augment=False))
        val_batch = {k: torch.from_numpy(np.ascontiguousarray(v))
                     for k, v in vs.sample(4 * cfg.batch, np.random.default_rng(cfg.seed + 7)).items()}
        if head is not None:
            val_batch["labels"] = vs.foreground_classes(val_batch)

    # bfloat16 on the CPU was measured for 2D models only (same Dice, 0.59x the step time); 3D convolutions in it
    # gave NaN losses by the second step (tests/core/test_finetune3d.py), so volumes train in float32.
    cpu_bf16 = cfg.accel.cpu_bf16 and dims == 2
    optimizer = torch.optim.Adam(_param_groups(model, loaded, cfg.pretrained_lr_scale), lr=cfg.lr)
    optimise = Optimise(optimizer, device, cfg.mixed_precision, cfg.accel)
    best_state: dict[str, torch.Tensor] | None = None
    best_dice = -1.0

    def train_step(step: int) -> dict[str, float]:
        model.train()
        rng, _ = step_rng(cfg.seed, step)
        b = sampler.sample(cfg.batch, rng)
        x = batch_to_device(b["image"], device, cfg.accel)
        w = batch_to_device(b["weights"], device, cfg.accel)
        cosine_lr_at(optimizer, cfg.lr, loop.fraction(step), cfg.warmup)
        with autocast(device, cfg.mixed_precision, cfg.accel.amp_dtype, cpu_bf16):
            logits = model(x)
        if head is not None:
            loss = head.loss(logits, batch_to_device(b["targets"], device, cfg.accel), w)
        else:
            loss = segmentation_loss(logits, batch_to_device(b["labels"], device, cfg.accel), w)
        optimise(loss)
        if on_step is not None:
            on_step(step + 1, model)
            model.train()
        return {"loss": float(loss.detach())}

    def validate() -> float:
        nonlocal best_state, best_dice
        assert val_batch is not None
        model.eval()
        with torch.no_grad(), autocast(device, cfg.mixed_precision, cfg.accel.amp_dtype, cpu_bf16):
            # A shape head's first two outputs are background and foreground.
            pred = torch.cat([model(chunk.to(device))[:, : 2 if head is not None else None].argmax(1).cpu()
                              for chunk in val_batch["image"].split(cfg.batch)])
        t = val_batch["labels"]
        fg_pred, fg_true, annotated = pred > 0, t > 1, t > 0
        inter = (fg_pred & fg_true & annotated).sum().item()
        dice = (2 * inter + 1e-6) / ((fg_pred & annotated).sum().item() + fg_true.sum().item() + 1e-6)
        if dice > best_dice:
            best_dice, best_state = dice, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        return 1.0 - dice  # the loop minimises

    norm = model_normalisation(norms)
    # Where the labelled images' backgrounds sat as the model saw them; a retrain widens the model's range.
    levels = [median_level(im.data, n) for im, n in zip(images, norms)]
    levels += list(ckpt.levels or []) if continuing else []
    # Each labelled image's own scaling, as training saw it, for prediction to pick from. A retrain's images (frames
    # of one acquisition and replayed windows) share their median instead, `norm`: in the DSB2018 correction loop
    # that did better than per-image scalings, which gave a dim frame a scaling unlike the one it was right under
    # (docs/benchmarks.md, "Each image scaled as the labelled image that fits it").
    scalings = None if continuing else [n for k, n in enumerate(norms) if n not in norms[:k]]
    saved: ModelBundle | None = None

    def save(step: int, final: bool) -> None:
        nonlocal saved
        state = (best_state if (final and best_state is not None)
                 else {k: v.detach().cpu() for k, v in model.state_dict().items()})
        saved = ModelBundle(
            kind="segmenter", target="instance" if head is not None else kind, classes=classes,
            instance_head=head.name if head is not None else None,
            postprocess=dict(ckpt.postprocess) if head is not None and ckpt is not None and ckpt.postprocess else None,
            init_method=init_method, config=to_dict(cfg),
            normalisation=norm, normalisations=scalings, state=state, step=step, history=loop.history,
            best_val_dice=best_dice if best_dice >= 0 else None, levels=[round(min(levels), 4), round(max(levels), 4)],
        )
        if out is not None:
            saved.save(out)

    loop = Loop("finetune", loop_steps(cfg.steps, cfg.minutes), cfg.batch, train_step, save,
                validate if val_batch is not None else None,
                cfg.val_every, cfg.checkpoint_every, 0, callback, should_stop, budget_s=cfg.minutes * 60)
    last = loop.run(0)
    assert saved is not None  # the loop always saves once at its end
    if head is not None and not (should_stop is not None and should_stop()):
        # Seed/NMS thresholds and minimum size chosen on the labelled planes (never test images), kept in the model.
        saved.postprocess = (tune_on_volumes(saved, head, images, labels, chosen, cfg.device) if dims == 3
                             else tune_on_labelled(saved, head, images, chosen, kind == "sparse_instance", cfg.device))
        if out is not None:
            saved.save(out)
    return FinetuneResult(saved, Path(out) if out is not None else None, last, best_dice if best_dice >= 0 else None)


def shape_objective(head: InstanceHead, images: Sequence[Image], norms: list, items: list, patch: int, sparse: bool,
                    augment: bool = True, intensity: float = 0.0) -> ShapeObjective:
    """A `ShapeObjective` over labelled planes `items` ((image index, plane, labels, weights) each)."""

    planes = []
    for i, p, lab, w in items:
        ids, annotated = instance_ids(lab[0], sparse)
        weight = annotated.astype(np.float32) * (1.0 if w is None else np.asarray(w[0], np.float32))
        planes.append((images[i].select_planes([p]), norms[i], ids, weight))
    return ShapeObjective(head, planes, patch, augment, intensity)


def tune_on_labelled(model: ModelBundle, head: InstanceHead, images: Sequence[Image], items: list, sparse: bool,
                     device: str, tta: int | None = None) -> dict:
    """Post-processing parameters of `model` tuned on its labelled planes `items` (predicted as a user would:
    with the default test-time flips, or `tta` of them)."""
    from ..config import PredictConfig
    from .predict import Predictor
    from .shape_training import tune_postprocess, tuning_planes

    predictor = Predictor(model, PredictConfig(device=device, tta=PredictConfig.tta if tta is None else tta))
    picked = [items[k] for k in tuning_planes([int(np.prod(lab.shape)) for _, _, lab, _ in items])]
    outputs, truths, annotated = [], [], []
    for i, p, lab, _ in picked:
        image = images[i].select_planes([p])
        outputs.append(predictor.probabilities(image.data[0], predictor.normalisation_for(image)))
        ids, ann = instance_ids(lab[0], sparse)
        truths.append(ids)
        annotated.append(ann if sparse else None)
    return tune_postprocess(head, outputs, truths, annotated)


def tune_on_volumes(model: ModelBundle, head: InstanceHead, images: Sequence[Image], labels: Sequence[np.ndarray],
                    units: list, device: str) -> dict:
    """Post-processing parameters of a 3D `model` tuned on its labelled volumes `units`: each predicted whole and
    decoded in 3D, scored on its painted slices."""
    from ..config import PredictConfig
    from .predict import Predictor
    from .shape_training import tune_postprocess, tuning_planes

    predictor = Predictor(model, PredictConfig(device=device))
    picked = [units[k] for k in tuning_planes([int(np.prod(t.shape[1:])) for _, _, t, _ in units])]
    outputs, truths, painted = vol.volume_tuning_data(predictor, images, labels, picked)
    return tune_postprocess(head, outputs, truths, painted=painted)


__all__ = ["FinetuneResult", "StepHook", "finetune", "segmentation_loss", "select_fraction"]
