"""Student-t statistics for judging sweeps: the t CDF and quantile, mean ± CI, the paired t-test.

The t distribution's CDF comes from the regularized incomplete beta function: for ``ν`` degrees of freedom,
``P(|T| > t) = I_x(ν/2, 1/2)`` with ``x = ν / (ν + t²)``. ``I_x(a, b)`` is evaluated by its continued
fraction (modified Lentz iteration), on the side of ``x`` where it converges fast, and the quantile by
bisection on the CDF. Pure Python: no SciPy in the workspace (docs/design/statistics.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MeanCI", "PairedTest", "mean_ci", "paired_test", "regularized_beta", "t_cdf", "t_ppf",
           "t_two_sided_p"]

_TINY = 1e-300
_EPS = 1e-15


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (converges for x < (a + 1) / (a + b + 2))."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError(f"regularized_beta needs a, b > 0 (got {a}, {b})")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"regularized_beta needs 0 <= x <= 1 (got {x})")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0 (got {df})")
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = t_two_sided_p(t, df) / 2.0
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (``t_ppf(0.975, 2) = 4.302653``), by bisection on :func:`t_cdf`."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"the quantile's probability must be in (0, 1) (got {p})")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values with the half-width of its ``confidence`` interval (None for n < 2)."""

    n: int
    mean: float
    std: float | None  # sample standard deviation (n - 1)
    half_width: float | None
    confidence: float

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean ± t_{(1+c)/2, n-1} · s / √n. ValueError for no values."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1) (got {confidence})")
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = math.fsum(values) / n
    if n < 2:
        return MeanCI(n, mean, None, None, confidence)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_ppf((1.0 + confidence) / 2.0, n - 1) * std / math.sqrt(n)
    return MeanCI(n, mean, std, half, confidence)


@dataclass(frozen=True)
class PairedTest:
    """The paired differences ``variant − baseline``: their mean ± CI, the t statistic and two-sided p."""

    diff: MeanCI
    t: float | None
    p_value: float | None


def paired_test(baseline: Sequence[float], variant: Sequence[float], confidence: float = 0.95) -> PairedTest:
    """Paired t-test of ``variant[i] − baseline[i]`` (the same seed i) against 0; t and p are None for fewer
    than two pairs. Identical differences (zero spread) give p = 1 when they are 0, else p = 0."""
    if len(baseline) != len(variant):
        raise ValueError(f"paired_test needs pairs: {len(baseline)} baseline vs {len(variant)} variant "
                         "values")
    diffs = [v - b for b, v in zip(baseline, variant, strict=True)]
    ci = mean_ci(diffs, confidence)
    if ci.n < 2 or ci.std is None:
        return PairedTest(ci, None, None)
    if ci.std == 0.0:
        return PairedTest(ci, 0.0 if ci.mean == 0 else math.copysign(math.inf, ci.mean),
                          1.0 if ci.mean == 0 else 0.0)
    t = ci.mean / (ci.std / math.sqrt(ci.n))
    return PairedTest(ci, t, t_two_sided_p(t, ci.n - 1))
