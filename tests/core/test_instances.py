"""Instance targets and instances recovered from probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_tower.errors import TowerError
from napari_tower.segment.instances import instance_to_targets, instances_from_probabilities
from napari_tower.segment.metrics import average_precision, object_scores


def touching_squares():
    labels = np.zeros((20, 30), np.int32)
    labels[4:14, 4:14] = 1
    labels[4:14, 14:24] = 2  # shares an edge with object 1
    return labels


def same_partition(a, b):
    """Equal up to renaming of the ids."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
            and np.array_equal(a == 0, b == 0))


def test_targets_of_touching_squares():
    labels = touching_squares()
    fg, bd = instance_to_targets(labels)
    assert fg.dtype == np.uint8 and bd.dtype == np.uint8
    assert np.array_equal(fg, (labels > 0).astype(np.uint8))
    # inner boundary: both columns at the shared edge, the outer rings, nothing outside
    assert bd[8, 13] == 1 and bd[8, 14] == 1
    assert bd[8, 12] == 0 and bd[8, 15] == 0
    assert bd[4, 8] == 1 and bd[13, 20] == 1
    assert not np.any(bd[labels == 0])
    interiors, n = ndi.label(fg.astype(bool) & (bd == 0))
    assert n == 2


def test_perfect_probabilities_recover_touching_objects():
    labels = touching_squares()
    fg, bd = instance_to_targets(labels)
    result = instances_from_probabilities(fg.astype(np.float32), bd.astype(np.float32), min_size=4)
    assert result.dtype == np.int32 and result.shape == labels.shape
    assert result.max() == 2
    assert object_scores(result, labels)["f1"] == 1.0
    assert average_precision(result, labels) == 1.0
    assert same_partition(result, labels)


def test_without_boundary_touching_objects_merge():
    labels = touching_squares()
    fg, _ = instance_to_targets(labels)
    result = instances_from_probabilities(fg.astype(np.float32))
    assert result.max() == 1
    assert np.array_equal(result > 0, labels > 0)


def test_blurred_probabilities_still_split_objects():
    labels = np.zeros((64, 64), np.int32)
    labels[8:28, 8:28] = 1
    labels[8:28, 28:48] = 2
    labels[28:50, 10:30] = 3
    fg, bd = instance_to_targets(labels)
    fg_p = ndi.gaussian_filter(fg.astype(np.float32), 1.0)
    bd_p = ndi.gaussian_filter(bd.astype(np.float32), 1.0) * 1.5
    result = instances_from_probabilities(fg_p, bd_p)
    assert result.max() == 3
    assert object_scores(result, labels, threshold=0.7)["f1"] == 1.0


def test_min_size_removes_small_blobs_and_relabels():
    fg = np.zeros((30, 30), np.float32)
    fg[2:5, 2:5] = 1.0  # 9 pixels
    fg[10:20, 10:20] = 1.0  # 100 pixels
    fg[25:27, 25:29] = 1.0  # 8 pixels
    result = instances_from_probabilities(fg, min_size=16)
    assert result.max() == 1  # sequential after removal
    assert np.count_nonzero(result) == 100
    assert instances_from_probabilities(fg, min_size=0).max() == 3
    # same with a boundary channel
    fg_t, bd_t = instance_to_targets(ndi.label(fg > 0)[0])
    result = instances_from_probabilities(fg_t.astype(np.float32), bd_t.astype(np.float32), min_size=16)
    assert result.max() == 1 and np.count_nonzero(result) == 100


def test_holes_are_filled():
    fg = np.zeros((20, 20), np.float32)
    fg[3:15, 3:15] = 1.0
    fg[7:9, 7:10] = 0.0  # a 6-pixel hole
    filled = instances_from_probabilities(fg)
    assert filled.max() == 1 and np.count_nonzero(filled) == 144
    kept = instances_from_probabilities(fg, fill_holes=False)
    assert np.count_nonzero(kept) == 144 - 6
    # with a boundary channel: the hole's rim is boundary, the object still comes back whole
    labels = (fg > 0).astype(np.int32)
    fg_t, bd_t = instance_to_targets(labels)
    result = instances_from_probabilities(fg_t.astype(np.float32), bd_t.astype(np.float32))
    assert result.max() == 1 and np.count_nonzero(result) == 144


def test_filling_does_not_overwrite_an_object_inside_a_hole():
    labels = np.zeros((20, 20), np.int32)
    labels[2:18, 2:18] = 1
    labels[6:14, 6:14] = 0
    labels[8:12, 8:12] = 2  # island inside the ring's hole
    fg, bd = instance_to_targets(labels)
    result = instances_from_probabilities(fg.astype(np.float32), bd.astype(np.float32), min_size=4)
    assert result.max() == 2
    ring = result[3, 3]
    island = result[10, 10]
    assert ring != island and ring > 0 and island > 0
    assert np.count_nonzero(result == island) == 16


def test_empty_and_errors():
    assert instances_from_probabilities(np.zeros((8, 8))).max() == 0
    assert instances_from_probabilities(np.zeros((8, 8)), np.zeros((8, 8))).max() == 0
    # thin object: all boundary, no interior seed -> still an object
    fg = np.zeros((10, 10), np.float32)
    fg[5, 1:9] = 1
    assert instances_from_probabilities(fg, fg, min_size=1).max() == 1
    with pytest.raises(TowerError, match="shape"):
        instances_from_probabilities(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(TowerError, match="2D"):
        instances_from_probabilities(np.zeros(8))
