"""Segmentation metrics: hand-computed cases, edge cases and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from napari_tower.errors import TowerError
from napari_tower.segment.metrics import (
    Overlaps,
    _count_matches,
    average_precision,
    dice,
    evaluate,
    iou,
    match_instances,
    object_scores,
    overlaps,
)


def square(shape, top, left, side=4, value=1, into=None):
    a = np.zeros(shape, np.int32) if into is None else into
    a[top:top + side, left:left + side] = value
    return a


# ----------------------------------------------------------------------------- hand-computed


def test_shifted_square_by_hand():
    truth = square((10, 10), 2, 2)
    pred = square((10, 10), 2, 3)  # shifted right by one pixel: overlap 4 x 3 = 12, union 20
    assert dice(pred, truth) == pytest.approx(24 / 32)
    assert iou(pred, truth) == pytest.approx(12 / 20)
    assert match_instances(pred, truth) == (1, 0, 0)
    assert object_scores(pred, truth) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    # IoU 0.6 matches at 0.50, 0.55 and 0.60 (exactly) out of the nine thresholds 0.50..0.90.
    assert average_precision(pred, truth) == pytest.approx(3 / 9)
    assert match_instances(pred, truth, threshold=0.6) == (1, 0, 0)
    assert match_instances(pred, truth, threshold=0.65) == (0, 1, 1)


def test_two_objects_one_missed_one_spurious():
    truth = square((20, 20), 2, 2, value=1)
    square((20, 20), 12, 12, value=2, into=truth)
    pred = square((20, 20), 2, 3, value=7)  # matches truth 1 with IoU 0.6
    square((20, 20), 12, 2, value=9, into=pred)  # touches nothing
    assert match_instances(pred, truth) == (1, 1, 1)
    scores = object_scores(pred, truth)
    assert scores == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    # TP/(TP+FP+FN) = 1/3 at 0.50, 0.55, 0.60; 0/4 above.
    assert average_precision(pred, truth) == pytest.approx(3 * (1 / 3) / 9)
    # pixels: truth 32, pred 32, overlap 12
    assert dice(pred, truth) == pytest.approx(24 / 64)
    assert iou(pred, truth) == pytest.approx(12 / 52)


def test_ids_need_not_be_sequential_or_shared():
    truth = square((12, 12), 0, 0, value=1000)
    square((12, 12), 6, 6, value=3, into=truth)
    pred = np.where(truth == 1000, 5, np.where(truth == 3, 77, 0))
    assert match_instances(pred, truth) == (2, 0, 0)
    assert average_precision(pred, truth) == 1.0


def test_custom_thresholds_and_invalid_threshold():
    truth = square((10, 10), 2, 2)
    pred = square((10, 10), 2, 3)
    assert average_precision(pred, truth, thresholds=[0.5]) == 1.0
    assert average_precision(pred, truth, thresholds=[0.5, 0.7]) == 0.5
    with pytest.raises(TowerError, match="threshold"):
        match_instances(pred, truth, threshold=0)
    with pytest.raises(TowerError, match="threshold"):
        average_precision(pred, truth, thresholds=[])


def test_assignment_beats_greedy_at_low_threshold():
    # P0-T0 0.6, P0-T1 0.35, P1-T0 0.4: greedy on IoU takes P0-T0 and stops at 1 match,
    # the optimal one-to-one matching is P0-T1 + P1-T0.
    ov = Overlaps(n_pred=2, n_true=2, pred_index=np.array([0, 0, 1]), true_index=np.array([0, 1, 0]),
                  iou=np.array([0.6, 0.35, 0.4]))
    assert _count_matches(ov, 0.3) == 2
    assert _count_matches(ov, 0.5) == 1
    assert _count_matches(ov, 0.7) == 0


# ----------------------------------------------------------------------------- empty cases


def test_empty_cases():
    empty = np.zeros((8, 8), np.uint8)
    full = square((8, 8), 2, 2)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(empty, full) == 0.0 and iou(full, empty) == 0.0
    assert match_instances(empty, empty) == (0, 0, 0)
    assert object_scores(empty, empty) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert average_precision(empty, empty) == 1.0
    assert object_scores(empty, full) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert object_scores(full, empty) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert average_precision(full, empty) == 0.0


# ----------------------------------------------------------------------------- evaluate


def test_pooled_and_mean_differ():
    big = square((20, 20), 0, 0, side=10)  # 100 pixels, predicted perfectly
    small = square((20, 20), 0, 0, side=2)  # 4 pixels, missed entirely
    result = evaluate([big, np.zeros_like(small)], [big, small])
    assert result["instances"] is False  # binary truths, no object scores by default
    assert [r["dice"] for r in result["images"]] == [1.0, 0.0]
    assert result["mean"]["dice"] == pytest.approx(0.5)
    assert result["pooled"]["dice"] == pytest.approx(200 / 204)
    assert result["mean"]["iou"] == pytest.approx(0.5)
    assert result["pooled"]["iou"] == pytest.approx(100 / 104)
    assert "f1" not in result["mean"]


def test_evaluate_instances_rows_mean_pooled():
    t1 = square((20, 20), 2, 2, value=1)
    square((20, 20), 12, 12, value=2, into=t1)
    p1 = square((20, 20), 2, 3, value=1)
    square((20, 20), 12, 2, value=2, into=p1)  # image 1: tp 1, fp 1, fn 1
    t2 = square((20, 20), 5, 5, value=4)
    p2 = t2.copy()  # image 2: perfect
    result = evaluate([p1, p2], [t1, t2])
    assert result["instances"] is True and result["n_images"] == 2
    r1, r2 = result["images"]
    assert (r1["tp"], r1["fp"], r1["fn"]) == (1, 1, 1) and r1["f1"] == 0.5
    assert r1["ap"] == pytest.approx(1 / 9)
    assert r2["f1"] == 1.0 and r2["ap"] == 1.0 and r2["dice"] == 1.0
    assert result["mean"]["f1"] == pytest.approx(0.75)
    assert result["mean"]["ap"] == pytest.approx((1 / 9 + 1) / 2)
    pooled = result["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (2, 1, 1)
    assert pooled["precision"] == pytest.approx(2 / 3) and pooled["recall"] == pytest.approx(2 / 3)
    assert pooled["f1"] == pytest.approx(4 / 6)
    # pooled AP: 2/4 at 0.50-0.60, then 1/5 (only the perfect object) at 0.65-0.90
    assert pooled["ap"] == pytest.approx((3 * 2 / 4 + 6 * 1 / 5) / 9)
    assert pooled["dice"] == pytest.approx(2 * (12 + 16) / (32 + 32 + 16 + 16))


def test_binary_truth_becomes_connected_components():
    truth = square((20, 20), 1, 1)
    square((20, 20), 10, 10, into=truth)
    truth = truth.astype(np.uint8) * 255  # 0/255 mask with two blobs
    pred = square((20, 20), 1, 1, value=3)  # label image finding one of the two
    result = evaluate([pred], [truth], instances=True)
    row = result["images"][0]
    assert (row["tp"], row["fp"], row["fn"]) == (1, 0, 1)
    assert row["recall"] == 0.5
    # A binary prediction is split into components too.
    result = evaluate([truth > 0], [truth], instances=True)
    assert result["images"][0]["f1"] == 1.0
    # Auto mode: binary truths give pixel scores only.
    assert evaluate([pred], [truth])["instances"] is False


def test_evaluate_errors():
    a, b = np.zeros((4, 4), np.uint8), np.zeros((5, 5), np.uint8)
    with pytest.raises(TowerError, match=r"prediction 1 has shape \(5, 5\) but its truth has shape \(5, 6\)"):
        evaluate([a, b], [a, np.zeros((5, 6), np.uint8)])
    with pytest.raises(TowerError, match="give matching files in the same order"):
        evaluate([a, b], [b, a])
    with pytest.raises(TowerError, match="2 predictions but 1 truths"):
        evaluate([a, b], [a])
    with pytest.raises(TowerError, match="no images"):
        evaluate([], [])
    with pytest.raises(TowerError, match="threshold it first"):
        evaluate([np.full((4, 4), 0.7)], [a])
    with pytest.raises(TowerError, match="shape"):
        dice(a, b)


# ----------------------------------------------------------------------------- properties


def brute_force_matches(pred, truth, threshold):
    p_ids = [i for i in np.unique(pred) if i > 0]
    t_ids = [i for i in np.unique(truth) if i > 0]
    if not p_ids or not t_ids:
        return 0
    m = np.zeros((len(p_ids), len(t_ids)))
    for a, i in enumerate(p_ids):
        for b, j in enumerate(t_ids):
            inter = np.sum((pred == i) & (truth == j))
            union = np.sum((pred == i) | (truth == j))
            m[a, b] = inter / union
    ok = (m >= threshold - 1e-9).astype(float)
    r, c = linear_sum_assignment(ok, maximize=True)
    return int(ok[r, c].sum())


label_images = st.integers(0, 2**32 - 1).flatmap(
    lambda seed: st.tuples(st.just(seed), st.integers(1, 12), st.integers(1, 12), st.integers(0, 5)))


def random_labels(seed, h, w, k):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, k + 1, size=(h, w))
    truth = rng.integers(0, k + 1, size=(h, w))
    return pred, truth


@settings(max_examples=60, deadline=None)
@given(label_images, st.sampled_from([0.1, 0.3, 0.5, 0.75]))
def test_metrics_in_unit_interval_and_consistent(params, threshold):
    pred, truth = random_labels(*params)
    for value in (dice(pred, truth), iou(pred, truth), average_precision(pred, truth),
                  *object_scores(pred, truth, threshold).values()):
        assert 0.0 <= value <= 1.0
    tp, fp, fn = match_instances(pred, truth, threshold)
    assert tp + fp == len(set(np.unique(pred)) - {0})
    assert tp + fn == len(set(np.unique(truth)) - {0})
    assert tp == brute_force_matches(pred, truth, threshold)
    assert match_instances(truth, pred, threshold) == (tp, fn, fp)  # symmetric
    assert dice(pred, truth) >= iou(pred, truth)
    result = evaluate([pred, truth], [truth, pred], instances=True)
    for part in (result["mean"], result["pooled"]):
        assert all(0.0 <= part[k] <= 1.0 for k in ("dice", "iou", "precision", "recall", "f1", "ap"))


@settings(max_examples=40, deadline=None)
@given(label_images)
def test_sparse_and_dense_ids_give_the_same_overlaps(params):
    """Ids 1..k take the counting path, ids in the billions the sorting one: the IoU table must not differ."""
    pred, truth = random_labels(*params)
    spread = lambda x: np.where(x > 0, x.astype(np.int64) * 1_000_000_007 + 3, 0)
    dense, sparse = overlaps(pred, truth), overlaps(spread(pred), spread(truth))
    unsigned = overlaps(pred.astype(np.uint64), truth.astype(np.uint8))
    table = lambda ov: (ov.n_pred, ov.n_true, sorted(zip(ov.pred_index.tolist(), ov.true_index.tolist(),
                                                        ov.iou.tolist())))
    assert table(dense) == table(sparse) == table(unsigned)
