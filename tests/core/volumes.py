"""Synthetic volumes and a tiny 3D segmenter trained on them, shared by the 3D prediction tests (issue 17).

The segmenter is trained here with a few dozen plain Adam steps (a real network learning a real task,
bright balls on a dim noisy background), cached per process, so the 3D prediction tests do not depend
on the 3D fine-tuning code.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, to_dict
from napari_tower.data import Normalisation
from napari_tower.model_bundle import ModelBundle
from napari_tower.segment.model import Segmenter


def balls(shape=(48, 96, 96), n=20, radius=(4, 7), seed=0, centres=()) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 volume, int32 instance labels) of non-touching bright balls; `centres` adds balls of radius 6 there."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    labels = np.zeros(shape, np.int32)
    wanted = [(np.asarray(c), 6) for c in centres]
    tries = 0
    while len(wanted) < n + len(centres) and tries < 2000:
        tries += 1
        r = int(rng.integers(radius[0], radius[1] + 1))
        wanted.append((np.array([rng.integers(r, s - r) for s in shape]), r))
    k = 0
    for centre, r in wanted:
        ball = ((grid - centre) ** 2).sum(-1) <= r * r
        grown = ((grid - centre) ** 2).sum(-1) <= (r + 2) ** 2
        if (labels[grown] > 0).any():  # keep a gap, so objects never touch
            continue
        k += 1
        labels[ball] = k
    image = 200 + 600 * (labels > 0) + rng.normal(0, 40, shape)
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def config_3d(depth: int = 2, patch_z: int = 16) -> FinetuneConfig:
    return FinetuneConfig(steps=1, device="cpu", data=DataConfig(patch=32, patch_z=patch_z),
                          model=ModelConfig(base=4, depth=depth, dims="3d"))


@functools.cache
def tiny_segmenter_3d(steps: int = 40) -> ModelBundle:
    """A binary 3D segmenter (base 4, depth 2) trained for `steps` Adam steps on random 16 x 32 x 32 crops."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is as fast, and far faster on a busy machine
    try:
        return _train(steps)
    finally:
        torch.set_num_threads(threads)


def _train(steps: int) -> ModelBundle:
    torch.manual_seed(0)
    cfg = config_3d()
    model = Segmenter(1, 2, base=4, depth=2, spatial_dims=3, pools=cfg.model.pools(cfg.data.patch_z),
                    kernels=cfg.model.kernels(cfg.data.patch_z))
    image, labels = balls(seed=1)
    norm = Normalisation([200.0], [800.0])
    x_all = norm.apply(image[:, None], channel_axis=1)[:, 0]
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(4):
            z, y, x = (int(rng.integers(0, s - p + 1)) for s, p in zip(image.shape, (16, 32, 32)))
            xs.append(x_all[z:z + 16, y:y + 32, x:x + 32])
            ys.append(labels[z:z + 16, y:y + 32, x:x + 32] > 0)
        logits = model(torch.from_numpy(np.stack(xs)[:, None]))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(np.stack(ys).astype(np.int64)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return ModelBundle(kind="segmenter", target="binary", classes=2, config=to_dict(cfg), state=state,
                       normalisation=norm, init_method="scratch", step=steps)
