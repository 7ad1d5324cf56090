"""Comparisons of two methods that respect how the benchmark's numbers were made.

Per-image scores from one seed share that seed's training run, so pooling the images of all seeds into one
paired test treats them as independent and overstates every difference (pseudo-replication). Here the unit of
replication is the seed: one mean per seed, paired over seeds, and a hierarchical bootstrap (seeds, then images
within each seed) for a confidence interval that carries both sources of variation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    """Method A minus method B, paired over seeds (differences in the scores' own units)."""

    n_seeds: int
    mean_diff: float  # mean over seeds of (A's mean over images - B's mean over images)
    seed_diffs: tuple[float, ...]
    ci_low: float  # hierarchical bootstrap percentile interval of mean_diff
    ci_high: float
    paired_t_p: float  # two-sided paired t-test over seed means (nan with fewer than 2 seeds)
    wilcoxon_p: float  # two-sided exact Wilcoxon signed-rank over seed means (nan with fewer than 2 seeds)
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_means(per_image: Mapping[int, Sequence[float]]) -> dict[int, float]:
    """One mean per seed from each seed's per-image scores."""
    return {seed: float(np.mean(scores)) for seed, scores in per_image.items()}


def hierarchical_bootstrap(a: Mapping[int, Sequence[float]], b: Mapping[int, Sequence[float]],
                           resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean(A - B): resample seeds, then test images within each drawn seed.

    `a[s][i]` and `b[s][i]` are the scores of the same test image `i` under seed `s`, so images are resampled
    in pairs.
    """
    seeds = sorted(set(a) & set(b))
    diffs = [np.asarray(a[s], float) - np.asarray(b[s], float) for s in seeds]
    rng = np.random.default_rng(seed)
    n = len(seeds)
    out = np.empty(resamples)
    for r in range(resamples):
        picked = rng.integers(0, n, n)
        out[r] = np.mean([d[rng.integers(0, d.size, d.size)].mean() for d in (diffs[i] for i in picked)])
    tail = (1 - level) / 2
    return float(np.quantile(out, tail)), float(np.quantile(out, 1 - tail))


def compare(a: Mapping[int, Sequence[float]], b: Mapping[int, Sequence[float]], names: tuple[str, str] = ("A", "B"),
            alpha: float = 0.05, resamples: int = 10_000) -> PairedComparison:
    """A against B over the seeds both have: seed-level paired tests and a hierarchical bootstrap interval.

    The verdict calls a difference only when the paired t-test over seed means has p < `alpha` and the
    bootstrap interval excludes zero; with one seed nothing can be tested, and the verdict says so.
    """
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two methods share no seed")
    ma, mb = seed_means({s: a[s] for s in seeds}), seed_means({s: b[s] for s in seeds})
    d = np.array([ma[s] - mb[s] for s in seeds])
    low, high = hierarchical_bootstrap(a, b, resamples=resamples)
    if d.size < 2:
        t_p = w_p = float("nan")
    elif np.all(d == 0):
        t_p = w_p = 1.0
    else:
        t_p = float(stats.ttest_rel(d, np.zeros_like(d)).pvalue) if np.std(d) > 0 else 0.0
        w_p = float(stats.wilcoxon(d, method="exact").pvalue)
    mean = float(d.mean())
    if d.size < 2:
        verdict = "not testable (one seed)"
    elif t_p < alpha and (low > 0 or high < 0):
        verdict = f"{names[0]} better" if mean > 0 else f"{names[1]} better"
    else:
        verdict = f"no significant difference (seed-level p >= {alpha:g} or interval spans 0)"
    return PairedComparison(len(seeds), mean, tuple(float(x) for x in d), low, high, t_p, w_p, verdict)
