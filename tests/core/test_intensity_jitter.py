"""The fine-tuning sampler's intensity jitter (issue 21): random gamma, gain and offset of [0, 1] patches."""

from __future__ import annotations

import numpy as np

from napari_tower.config import FinetuneConfig
from napari_tower.data import Normalisation, PatchSampler, Source, from_array
from napari_tower.data.patch_augment import jitter_intensity


def test_jitter_stays_in_range_and_changes_level_and_contrast():
    rng = np.random.default_rng(0)
    patch = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(1, 64, 64)
    outs = [jitter_intensity(patch, 0.4, rng) for _ in range(200)]
    assert all(o.dtype == np.float32 and o.min() >= 0 and o.max() <= 1 for o in outs)
    means = np.array([o.mean() for o in outs])
    assert means.max() - means.min() > 0.2  # brightness moves
    assert np.all(np.diff(outs[0].ravel()) >= 0)  # monotonic: the patch's structure is kept


def test_sampler_jitters_images_only_and_reproducibly():
    image = from_array(np.random.default_rng(1).integers(0, 255, (64, 64)).astype(np.uint8))
    labels = np.ones((1, 64, 64), np.uint8)
    labels[0, 16:48, 16:48] = 2
    src = Source(image, Normalisation([0.0], [255.0]), labels)
    plain = PatchSampler([src], 32, structure_prior=False).sample(8, np.random.default_rng(3))
    jit = PatchSampler([src], 32, structure_prior=False, intensity=0.4).sample(8, np.random.default_rng(3))
    again = PatchSampler([src], 32, structure_prior=False, intensity=0.4).sample(8, np.random.default_rng(3))
    assert not np.allclose(plain["image"], jit["image"])
    np.testing.assert_array_equal(jit["image"], again["image"])
    # The first patch has the same corner and flips (its jitter is drawn after them): only its image changed.
    np.testing.assert_array_equal(plain["labels"][0], jit["labels"][0])


def test_fine_tuning_jitters_by_default():
    assert FinetuneConfig().intensity_jitter > 0
