"""Paired statistics behind ``align``'s verdict: is the aligned sampler better than the plain one?

Both samplers run from the same noise, so every sample gives a *pair* of outcomes, and the
comparison is paired (its variance is that of the difference, far smaller than either's):

- ``end_l2``: the ratio of the mean per-sample end-point errors (aligned / baseline) against a
  reference from the same noise, with a delta-method interval on its logarithm that uses the
  paired covariance (the same ratio-of-means estimator as a paired bootstrap, in closed form).
- ``kernel``: the unbiased squared MMD (Gretton et al. 2012) of each sampler's end points to the
  reference's end points, Gaussian kernel with the median-distance bandwidth of the reference. The
  difference of the two MMDs is a U-statistic over the sample triples (baseline_i, aligned_i,
  reference_i); its standard error is 2 sd(g_i) / sqrt(n) with g_i its Hoeffding projection
  (the relative-similarity test of Bounliphone et al. 2016). Pairs i = j are left out, so a
  sample's own reference never counts as a draw of the other distribution.

Relative changes are ``aligned / baseline - 1``; an interval entirely below 0 says *better*,
entirely above 0 *worse*, otherwise *inconclusive*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import torch

Verdict = Literal["better", "worse", "inconclusive"]


@dataclass(frozen=True)
class Change:
    """One metric, baseline vs aligned: the values, the relative change and its interval."""

    baseline: float
    aligned: float
    change: float | None  # aligned / baseline - 1; None where the baseline is not > 0
    low: float | None
    high: float | None
    verdict: Verdict


def _verdict(low: float, high: float) -> Verdict:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    return "better" if high < 0 else "worse" if low > 0 else "inconclusive"


def z_value(level: float) -> float:
    """The two-sided normal quantile of a ``level`` confidence interval."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def mean_ratio_change(baseline: torch.Tensor, aligned: torch.Tensor, level: float) -> Change:
    """mean(aligned) / mean(baseline) - 1 over paired per-sample values [n], with a ``level``
    interval: Var(log R) ~ (v_a / m_a^2 + v_b / m_b^2 - 2 c_ab / (m_a m_b)) / n."""
    b, a = baseline.to(torch.float64).flatten(), aligned.to(torch.float64).flatten()
    n = b.numel()
    mb, ma = float(b.mean()), float(a.mean())
    if n < 2 or mb <= 0 or ma <= 0:
        return Change(mb, ma, None, None, None, "inconclusive")
    cov = torch.cov(torch.stack([a, b]))
    var_log = (float(cov[0, 0]) / ma**2 + float(cov[1, 1]) / mb**2 - 2 * float(cov[0, 1]) / (ma * mb)) / n
    se = math.sqrt(max(var_log, 0.0))
    log_ratio, z = math.log(ma / mb), z_value(level)
    low, high = math.expm1(log_ratio - z * se), math.expm1(log_ratio + z * se)
    return Change(mb, ma, math.expm1(log_ratio), low, high, _verdict(low, high))


def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.square().sum(1)[:, None] + y.square().sum(1)[None, :] - 2 * x @ y.T).clamp(min=0)


def kernel_change(baseline: torch.Tensor, aligned: torch.Tensor, reference: torch.Tensor, level: float) -> Change:
    """Unbiased MMD^2 of baseline and of aligned end points to the reference end points (rows paired
    by noise), their relative change and its ``level`` interval (see the module docstring)."""
    b, a, r = (v.to(torch.float64).flatten(1) for v in (baseline, aligned, reference))
    n = r.shape[0]
    rr = _sq_dists(r, r)
    off = ~torch.eye(n, dtype=torch.bool)
    width2 = float(rr[off].median()) if n > 1 else 0.0
    if n < 3 or width2 <= 0:
        return Change(0.0, 0.0, None, None, None, "inconclusive")
    k = lambda x, y: torch.exp(-_sq_dists(x, y) / (2 * width2))  # noqa: E731
    k_rr = torch.exp(-rr / (2 * width2))

    def h(x: torch.Tensor) -> torch.Tensor:  # the MMD^2 kernel h_ij of sample x against r, i != j
        xr = k(x, r)
        return (k(x, x) + k_rr - xr - xr.T) * off

    h_b, h_a = h(b), h(a)
    mmd_b, mmd_a = float(h_b.sum()) / (n * (n - 1)), float(h_a.sum()) / (n * (n - 1))
    g = (h_a - h_b).sum(1) / (n - 1)  # Hoeffding projection of the difference
    diff, se = float(g.mean()), 2 * float(g.std()) / math.sqrt(n)
    z = z_value(level)
    verdict = _verdict(diff - z * se, diff + z * se)
    if mmd_b <= 0:
        return Change(mmd_b, mmd_a, None, None, None, verdict)
    return Change(mmd_b, mmd_a, diff / mmd_b, (diff - z * se) / mmd_b, (diff + z * se) / mmd_b, verdict)
