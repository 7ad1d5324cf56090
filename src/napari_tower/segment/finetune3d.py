"""The 3D parts of fine-tuning (issue 17): volumes as training units, their targets, sampler and geometry.

`finetune` stays one function for both modes; in 3D (``cfg.model.dims == "3d"``) it asks this module
for the model's pooling, the labelled volumes and their patch sampler. Labels are given as in 2D,
(planes, Y, X) in the image's plane order, so volume k of an image is planes z*k .. z*(k+1)-1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..config import FinetuneConfig
from ..data import Image, Normalisation
from ..errors import TowerError
from ..model_bundle import ModelBundle
from .shape_heads import InstanceHead
from .targets import encode_volume_targets, labelled_slices
from .volume_patches import LabelledVolume, VolumePatchSampler

if TYPE_CHECKING:
    from .predict import Predictor

Unit = tuple[int, int, np.ndarray, "np.ndarray | None"]  # (image index, volume index, targets, weights)


def check_dims(ckpt: ModelBundle, dims: int, source: str) -> None:
    """Refuse a checkpoint whose dimensionality differs from the run's, naming the fix."""
    if ckpt.spatial_dims == dims:
        return
    if dims == 3:
        raise TowerError(f"{source} is a 2D (plane by plane) model but this fine-tuning is 3D: fine-tune in 2D "
                         "(--dims 2d), or start from a model pretrained in 3D (pretrain with --dims 3d)")
    raise TowerError(f"{source} is a 3D (volume) model but this fine-tuning is 2D: fine-tune in 3D (--dims 3d), "
                     "or start from a model pretrained in 2D")


def check_volumes(images: Sequence[Image]) -> None:
    """3D fine-tuning needs stacks: an image of single planes has no z context to learn from."""
    for im in images:
        if im.z_size < 2:
            raise TowerError(f"{im.source} has no Z axis (axes {im.axes}): 3D fine-tuning needs volumes; "
                             "fine-tune in 2D (--dims 2d), or give the stack with its Z axis")


def check_head(kind: str, head: InstanceHead | None) -> None:
    """The class heads (binary, semantic, sparse, boundary instances) and the capped head train in 3D."""
    if kind == "sparse_instance":
        raise TowerError("sparse instance scribbles train 2D models only: in 3D paint whole objects (one id each, "
                         "0 around them) on a few slices and use target instance, or fine-tune in 2D")
    if kind == "instance" and head is not None and not head.volumes:
        raise TowerError(f"the {head.name} instance head is 2D only: fine-tune 3D instances with the capped or "
                         "boundary head (--instance-head capped, dense instance ids on the painted slices), or use 2D")


def volume_geometry(cfg: FinetuneConfig, images: Sequence[Image], ckpt: ModelBundle | None
                    ) -> tuple[list[tuple[int, ...]], int]:
    """The U-Net's pooling and the training patch depth, with `cfg` updated so the saved model rebuilds them.

    A checkpoint brings its voxel size and patch depth (its transposed convolutions are shaped by its
    pooling, so the new model must pool as it did); the run keeps its own depth where that pools the same
    (an anisotropic stack pretrained 16 slices deep fine-tunes 4 deep, a quarter of the voxels a step). A
    fresh model takes `cfg`'s. The patch is no deeper than the deepest volume and its depth is rounded up
    to a multiple of the z pooling; thinner volumes are padded by the sampler.
    """
    own = max(1, min(cfg.data.patch_z, max(im.z_size for im in images)))
    cfg.data.patch_z = own
    if ckpt is not None:
        model, data = ckpt.config.get("model") or {}, ckpt.config.get("data") or {}
        cfg.model.voxel_size = tuple(float(v) for v in model.get("voxel_size", (1.0, 1.0, 1.0)))
        saved = int(data.get("patch_z", own))
        if cfg.model.pools(own) != cfg.model.pools(saved):
            cfg.data.patch_z = saved
    pools = cfg.model.pools(cfg.data.patch_z)
    assert pools is not None  # 3D
    if ckpt is not None and ckpt.pools is not None and [tuple(p) for p in ckpt.pools] != pools:
        raise TowerError("the checkpoint's pooling cannot be rebuilt from its settings: start without it")
    z_multiple = math.prod(p[0] for p in pools)
    return pools, math.ceil(cfg.data.patch_z / z_multiple) * z_multiple


def volume_targets(labels: np.ndarray, z_size: int, kind: str) -> np.ndarray:
    """(planes, Y, X) labels of an image as sparse-convention targets, encoded volume by volume."""
    z = max(1, z_size)
    out = np.zeros(labels.shape, np.uint8)
    for start in range(0, labels.shape[0], z):
        part = labels[start:start + z]
        if (np.asarray(part) > 0).any():  # an unpainted volume stays unannotated
            out[start:start + z] = encode_volume_targets(part, kind)
    return out


def volume_units(images: Sequence[Image], targets: Sequence[np.ndarray],
                 weights: Sequence[np.ndarray | None] | None) -> list[Unit]:
    """Every volume of every image with its targets: the unit of label fractions and validation splits in 3D."""
    out: list[Unit] = []
    for i, (im, t) in enumerate(zip(images, targets)):
        z = max(1, im.z_size)
        w = weights[i] if weights is not None else None
        for k in range(im.n_volumes):
            part = slice(k * z, (k + 1) * z)
            out.append((i, k, t[part], None if w is None else np.asarray(w[part], np.float32)))
    return out


def shape_units(images: Sequence[Image], labels: Sequence[np.ndarray], weights: Sequence[np.ndarray | None] | None,
                head: InstanceHead, voxel_size: Sequence[float]) -> list[Unit]:
    """Every volume of every image with a shape head's targets (T, Z, Y, X) and weights (Z, Y, X): 1 on the
    painted slices (times the user's weights), 0 on the others, which carry no loss.

    Targets are float16 (a 3D run holds every volume's maps; the sampler reads patches back as float32).
    """
    z_size, y_size, x_size = (float(v) for v in voxel_size)
    sampling = (z_size / y_size, 1.0, x_size / y_size)  # in in-plane pixels, as the cap is
    out: list[Unit] = []
    for i, k, part, w in volume_units(images, labels, weights):
        ids = np.asarray(part)
        done = labelled_slices(ids)
        wts = np.broadcast_to(done[:, None, None], ids.shape).astype(np.float32)
        if w is not None:
            wts = wts * w
        t = head.encode_volume(ids, done, sampling) if done.any() else np.zeros((2, *ids.shape), np.float32)
        out.append((i, k, t.astype(np.float16), wts))
    return out


def volume_tuning_data(predictor: Predictor, images: Sequence[Image], labels: Sequence[np.ndarray],
                       units: Sequence[Unit]) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(activated outputs (K, Z, Y, X), instance ids (Z, Y, X), painted slices (Z,)) of the labelled volumes
    `units`, predicted whole as a user's volumes are: what `shape_training.tune_postprocess` scores in 3D."""
    outputs, truths, painted = [], [], []
    norms: dict[int, Normalisation] = {}  # one image's percentiles, read once for all its volumes
    for i, k, _, _ in units:
        z = max(1, images[i].z_size)
        ids = np.asarray(labels[i][k * z:(k + 1) * z]).astype(np.int64)
        done = labelled_slices(ids)
        if not done.any():
            continue
        if i not in norms:
            norms[i] = predictor.normalisation_for(images[i])
        probs = predictor.volume_probabilities(images[i].volume(k), norms[i])
        outputs.append(np.moveaxis(probs, 1, 0))
        truths.append(np.where(ids > 0, ids, 0))
        painted.append(done)
    return outputs, truths, painted


def volume_sampler(images: Sequence[Image], norms: Sequence[Normalisation], units: Sequence[Unit], patch: int,
                   patch_z: int, cfg: FinetuneConfig, augment: bool = True) -> VolumePatchSampler:
    """Patches from `units`, each holding annotated voxels (`VolumePatchSampler`)."""
    volumes = [LabelledVolume(images[i].volume(k), norms[i], t, w) for i, k, t, w in units]
    return VolumePatchSampler(volumes, patch, patch_z, augment=augment,
                              intensity=cfg.intensity_jitter if augment else 0.0, seed=cfg.seed)


__all__ = ["check_dims", "check_head", "check_volumes", "shape_units", "volume_geometry", "volume_sampler",
           "volume_targets", "volume_tuning_data", "volume_units"]
