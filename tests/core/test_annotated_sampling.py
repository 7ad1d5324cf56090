"""Fine-tuning patches land on the annotated part of a sparsely annotated plane (issue 18: corrected regions)."""

from __future__ import annotations

import numpy as np
import torch

from napari_tower.data import Normalisation, PatchSampler, Source, from_array
from napari_tower.data.annotated import AnnotatedPixels
from napari_tower.segment.losses import segmentation_loss

NORM = Normalisation([0.0], [1.0])


def _source(image: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> Source:
    return Source(from_array(image, "synthetic", axes="ZYX"), NORM, labels, weights)


def test_a_sparse_plane_gives_patches_that_hold_annotated_pixels():
    rng = np.random.default_rng(0)
    image = rng.random((1, 512, 512), dtype=np.float32)
    labels = np.zeros((1, 512, 512), np.int64)
    labels[0, 300:340, 40:80] = 2  # one painted 40 x 40 region; 0 = unannotated
    batch = PatchSampler([_source(image, labels)], 64, structure_prior=False).sample(64, np.random.default_rng(1))
    held = (batch["labels"] > 0).reshape(64, -1).sum(1)
    assert (held > 0).all()
    # Uniform corners would miss the region most of the time: (64 + 40 - 1)^2 / 449^2 = 5% of 64 px patches hit it.
    assert held.mean() > 0.2 * 40 * 40


def test_zero_weights_outside_corrected_regions_count_as_unannotated():
    image = np.random.default_rng(0).random((1, 384, 384), dtype=np.float32)
    labels = np.ones((1, 384, 384), np.int64)  # dense targets (every pixel a class) ...
    weights = np.zeros((1, 384, 384), np.float32)
    weights[0, :64, 320:] = 5.0  # ... but loss only in one corrected 64 x 64 tile
    sampler = PatchSampler([_source(image, labels, weights)], 64, structure_prior=False)
    batch = sampler.sample(32, np.random.default_rng(2))
    assert ((batch["weights"] > 0).reshape(32, -1).sum(1) > 0).all()


def test_planes_are_drawn_by_their_annotated_pixels():
    image = np.zeros((3, 256, 256), np.float32)
    labels = np.zeros((3, 256, 256), np.int64)
    labels[0, 10:30, 10:30] = 1  # 400 px
    labels[1, 100:160, 100:120] = 1  # 1200 px
    sampler = PatchSampler([_source(image, labels)], 32, structure_prior=False)
    rng = np.random.default_rng(3)
    planes = [sampler._pick_corner(rng)[1] for _ in range(4000)]
    counts = np.bincount(planes, minlength=3)
    assert counts[2] == 0  # nothing annotated on plane 2: it teaches nothing
    assert 2.6 < counts[1] / counts[0] < 3.4


def test_densely_labelled_planes_keep_uniform_draws():
    rng = np.random.default_rng(0)
    image = rng.random((2, 200, 240), dtype=np.float32)
    labels = rng.integers(1, 3, (2, 200, 240))  # every pixel annotated
    labelled = PatchSampler([_source(image, labels)], 64, structure_prior=False).sample(16, np.random.default_rng(5))
    plain = PatchSampler([Source(from_array(image, "synthetic", axes="ZYX"), NORM)], 64,
                         structure_prior=False).sample(16, np.random.default_rng(5))
    np.testing.assert_array_equal(labelled["image"], plain["image"])


def test_huge_planes_are_indexed_on_a_grid_and_still_hit_the_annotation():
    labels = np.zeros((3000, 3000), np.int64)
    labels[2900:2950, 10:60] = 1
    index = AnnotatedPixels.of(labels)
    assert index.stride > 1 and len(index.cells) < 2**18
    rng = np.random.default_rng(4)
    for _ in range(200):
        y, x = index.corner(96, rng)
        assert labels[y: y + 96, x: x + 96].any()


def test_pixels_of_weight_zero_do_not_change_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 32, 32)
    targets = torch.randint(1, 4, (2, 32, 32))
    weights = torch.zeros(2, 32, 32)
    weights[:, 8:20, 8:20] = 1.0
    other = logits.clone()
    other[:, :, 24:, :] = torch.randn(2, 3, 8, 32) * 10  # change only where the weight is 0
    assert torch.allclose(segmentation_loss(logits, targets, weights), segmentation_loss(other, targets, weights))
