"""The statistics of a report: confidence intervals over seeds and paired comparisons with the
full model. Pure functions on plain numbers, so the tests can check them against explicit formulas.

Why these tests: a benchmark table compares a handful of seeds per cell (3 to 10). Seeds are paired
-- a compressed model and the full model run with the same seed share the data split and the
evaluation negatives -- so the per-seed difference removes that part of the spread, and a paired
t-test on the differences is the natural test.
Definitions (``ALPHA`` = 0.05, ``MIN_PAIRS`` = 3, margin ``δ`` as a fraction of the full model's mean
over the paired seeds; ``gain`` = per-seed difference oriented so that positive is better, i.e.
``candidate - full`` for HR/NDCG and ``full - candidate`` for RMSE/MAE):

* ``p_value``: two-sided paired t-test of mean gain = 0 (``scipy.stats.ttest_rel``).
* ``p_noninferior``: one-sided paired t-test of H0 "mean gain <= -δ·|full mean|" (non-inferiority).
* ``p_wilcoxon``: two-sided Wilcoxon signed-rank test (exact for small n) as a check that does not
  assume normal differences; it cannot go below 0.25 at n = 3 nor below 0.05 before n = 6, so it
  is reported, never used for a mark.
* verdict ``beats``: mean gain > 0 and ``p_value`` < ALPHA (one-sided p < 0.025).
* verdict ``reaches``: not ``beats``, ``p_noninferior`` < ALPHA: the compressed model is shown to be
  no worse than the full one by more than δ. A non-significant difference is NOT taken as
  "reaches": with 3 noisy seeds almost nothing is significant, and absence of evidence of a
  difference is not evidence of equivalence.
* verdict ``worse``: mean gain < 0 and ``p_value`` < ALPHA (and not non-inferior).
* verdict ``inconclusive``: none of the above; ``too few pairs``: fewer than ``MIN_PAIRS`` seeds that
  both cells have (no test at all).

When every paired difference is the same number the t statistic is undefined (zero variance):
p is taken as 1 if that number is 0 and as 0 otherwise (the t-test's limit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
MIN_PAIRS = 3
#: Default non-inferiority margin: 1 % of the full model's mean.
DEFAULT_MARGIN = 0.01
CONFIDENCE = 0.95

BEATS = "beats"
REACHES = "reaches"
WORSE = "worse"
INCONCLUSIVE = "inconclusive"
TOO_FEW = "too few pairs"


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with the sample std (ddof = 1) and a Student-t confidence interval."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """n, mean, sample std and the two-sided ``confidence`` interval mean ± t·s/sqrt(n) (t with n-1
    degrees of freedom); std and interval are NaN below two values. NaNs are ignored."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    """A candidate cell against its full-model reference over the seeds both have."""

    n_pairs: int
    diff: float  # mean of candidate - full over the paired seeds (not oriented)
    p_value: float  # two-sided paired t-test
    p_noninferior: float  # one-sided non-inferiority t-test at the margin
    p_wilcoxon: float  # two-sided Wilcoxon signed-rank test
    verdict: str

    @property
    def mark(self) -> str:
        """``beats`` / ``reaches`` / ``""``: what a table marks."""
        return self.verdict if self.verdict in (BEATS, REACHES) else ""


NO_COMPARISON = Comparison(0, math.nan, math.nan, math.nan, math.nan, TOO_FEW)


def _t_p_values(gain: np.ndarray, shift: float) -> tuple[float, float]:
    """(two-sided p of mean gain = 0, one-sided p of mean gain <= -shift)."""
    n = gain.size
    mean = float(gain.mean())
    sd = float(gain.std(ddof=1))
    if sd == 0.0 or not math.isfinite(sd):
        two = 1.0 if mean == 0.0 else 0.0
        one = 0.0 if mean + shift > 0 else 1.0
        return two, one
    se = sd / math.sqrt(n)
    t_zero = mean / se
    t_margin = (mean + shift) / se
    two = float(2 * sps.t.sf(abs(t_zero), n - 1))
    one = float(sps.t.sf(t_margin, n - 1))
    return two, one


def compare_paired(
    candidate: Mapping[str, float],
    reference: Mapping[str, float],
    higher_is_better: bool,
    margin: float = DEFAULT_MARGIN,
    alpha: float = ALPHA,
) -> Comparison:
    """Paired comparison of per-seed values (seed -> value) over the seeds both have; see the
    module docstring for the tests and the verdicts."""
    seeds = sorted(
        s for s in set(candidate) & set(reference)
        if not (math.isnan(candidate[s]) or math.isnan(reference[s]))
    )  # fmt: skip
    if not seeds:
        return NO_COMPARISON
    c = np.array([candidate[s] for s in seeds], dtype=float)
    r = np.array([reference[s] for s in seeds], dtype=float)
    diff = c - r
    n = len(seeds)
    if n < MIN_PAIRS:
        return Comparison(n, float(diff.mean()), math.nan, math.nan, math.nan, TOO_FEW)
    gain = diff if higher_is_better else -diff
    shift = margin * abs(float(r.mean()))
    p_value, p_noninferior = _t_p_values(gain, shift)
    try:
        p_wilcoxon = float(sps.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    except ValueError:
        p_wilcoxon = math.nan
    mean_gain = float(gain.mean())
    if p_value < alpha and mean_gain > 0:
        verdict = BEATS
    elif p_noninferior < alpha:
        verdict = REACHES
    elif p_value < alpha and mean_gain < 0:
        verdict = WORSE
    else:
        verdict = INCONCLUSIVE
    return Comparison(n, float(diff.mean()), p_value, p_noninferior, p_wilcoxon, verdict)
