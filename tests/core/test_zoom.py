"""Scaled copies of the labelled planes (issue 21): exact targets at every scale, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from napari_tower.config import FinetuneConfig
from napari_tower.data import compute_normalisation, from_array
from napari_tower.segment import zoom as zoom_module
from napari_tower.segment.targets import encode_targets
from napari_tower.segment.zoom import zoom_scales, zoomed_sources


def _discs(shape=(96, 128), radius=10):
    ids = np.zeros(shape, np.int64)
    centres = [(y, x) for y in range(radius + 4, shape[0] - radius, 2 * radius + 6)
               for x in range(radius + 4, shape[1] - radius, 2 * radius + 6)]
    for k, c in enumerate(centres, start=1):
        ids[disk(c, radius, shape=shape)] = k
    image = np.where(ids > 0, 200, 20).astype(np.uint8)
    return image, ids, len(centres)


def test_scales_span_the_zoom_range_geometrically():
    assert zoom_scales(1.0) == ()
    assert zoom_scales(4.0) == pytest.approx((0.25, 0.5, 2.0, 4.0))
    assert FinetuneConfig().zoom == 1.0, "off by default: where objects keep their size the copies cost Dice"


def test_instance_copies_keep_every_object_and_a_whole_boundary_ring():
    image, ids, n = _discs()
    img = from_array(image[None], "discs", axes="ZYX")
    targets = encode_targets(ids[None], "instance")
    items = [(0, 0, targets[0:1], None)]
    sources = zoomed_sources([img], [compute_normalisation(img.data, "discs")], [ids[None]], items, "instance",
                             zoom=2.0, min_side=32)
    assert [s.image.shape[2:] for s in sources] == [(48, 64), (68, 91), (136, 181), (192, 256)]
    fg_share = (targets[0] > 1).mean()
    for s in sources:
        t = s.labels[0]
        assert t.shape == s.image.shape[2:]
        # The foreground keeps its share of the image; the image moves with the labels.
        assert (t > 1).mean() == pytest.approx(fg_share, rel=0.08)
        pixels = s.norm.apply(np.asarray(s.image.data[0]))[0]
        assert pixels[t > 1].mean() > 0.5 > pixels[t == 1].mean()
        # Every object is still there and its boundary class is the rescaled object's own inner ring, not a
        # subsampled (broken) copy of the original ring.
        from skimage.measure import label

        objects = label(t > 1)
        assert objects.max() == n
        ring = find_boundaries(objects, mode="inner")
        assert np.array_equal(t == 3, ring)


def test_class_maps_are_rescaled_by_nearest_and_weights_follow():
    image, ids, _ = _discs()
    img = from_array(image[None], "discs", axes="ZYX")
    sparse = np.where(ids > 0, 2, 1).astype(np.uint8)[None]
    sparse[0, :, :20] = 0  # unannotated strip
    weights = np.where(sparse > 0, 1.0, 0.0).astype(np.float32)
    sources = zoomed_sources([img], [compute_normalisation(img.data, "d")], [sparse], [(0, 0, sparse, weights)],
                             "sparse", zoom=2.0, min_side=16)
    for s in sources:
        assert set(np.unique(s.labels)) <= {0, 1, 2}
        assert np.array_equal(s.weights > 0, s.labels > 0)


def test_copies_stop_at_the_memory_budget(monkeypatch):
    image, ids, _ = _discs()
    planes = np.stack([image] * 6)
    img = from_array(planes, "stack", axes="ZYX")
    targets = encode_targets(np.stack([ids] * 6), "instance")
    items = [(0, p, targets[p:p + 1], None) for p in range(6)]
    per_plane = sum(96 * 128 * s * s for s in zoom_scales(2.0))
    monkeypatch.setattr(zoom_module, "MAX_COPY_PIXELS", int(2.5 * per_plane))
    sources = zoomed_sources([img], [compute_normalisation(img.data, "s")], [np.stack([ids] * 6)], items,
                             "instance", zoom=2.0, min_side=16)
    assert len(sources) == 2 * 4  # two planes' copies fit, four scales each


def test_a_retrain_fits_the_corrections_at_their_own_scale():
    from napari_tower.config import RetrainConfig
    from napari_tower.segment.retrain import retrain_finetune_config

    cfg = retrain_finetune_config(None, RetrainConfig(), FinetuneConfig(zoom=3.0))
    assert cfg.zoom == 1.0
