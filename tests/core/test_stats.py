"""Seed-level comparisons: a seed's shared training run must not count as many independent samples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from napari_tower.stats import compare, hierarchical_bootstrap, seed_means


def _scores(seed_offsets, n_images=60, noise=0.004, seed=0):
    """Per-image scores of A and B: B is a fixed image difficulty, A adds a per-seed offset plus noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.85, 0.95, n_images)
    a, b = {}, {}
    for s, offset in enumerate(seed_offsets):
        b[s] = base + rng.normal(0, noise, n_images)
        a[s] = base + offset + rng.normal(0, noise, n_images)
    return a, b


def test_seed_effects_are_not_mistaken_for_a_difference():
    # The seeds disagree on the sign; pooled over images every seed looks decisive.
    a, b = _scores([0.02, -0.015, 0.01])
    pooled = sps.wilcoxon(np.concatenate(list(a.values())), np.concatenate(list(b.values()))).pvalue
    assert pooled < 0.05  # what the old pooled test would have called significant
    result = compare(a, b)
    assert result.n_seeds == 3
    assert result.paired_t_p > 0.05
    assert result.ci_low < 0 < result.ci_high
    assert result.verdict.startswith("no significant difference")


def test_a_consistent_difference_over_seeds_is_found():
    a, b = _scores([0.030, 0.028, 0.033, 0.031, 0.029])
    result = compare(a, b, names=("TOWER", "scratch"))
    assert result.verdict == "TOWER better"
    assert result.paired_t_p < 1e-3
    assert 0.025 < result.ci_low < result.mean_diff < result.ci_high < 0.036
    assert result.mean_diff == pytest.approx(np.mean([0.030, 0.028, 0.033, 0.031, 0.029]), abs=0.003)
    worse = compare(b, a, names=("TOWER", "scratch"))
    assert worse.verdict == "scratch better" and worse.mean_diff == pytest.approx(-result.mean_diff)


def test_one_seed_cannot_be_tested():
    a, b = _scores([0.05])
    result = compare(a, b)
    assert result.verdict == "not testable (one seed)"
    assert np.isnan(result.paired_t_p)


def test_seed_means_and_bootstrap_pair_the_images():
    a = {0: [0.9, 0.8], 1: [0.7, 0.9]}
    assert seed_means(a) == {0: pytest.approx(0.85), 1: pytest.approx(0.8)}
    # Identical scores: every resample's difference is exactly zero.
    assert hierarchical_bootstrap(a, a, resamples=200) == (0.0, 0.0)
    with pytest.raises(ValueError, match="share no seed"):
        compare({0: [1.0]}, {1: [1.0]})
