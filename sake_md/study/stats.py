"""Statistics fit for the study's design, as pure functions of arrays (numpy, scipy).

The design: each variant is trained with seeds 0..S-1, and seed k of every variant shares its validation
split (and so its training frames) with seed k of the baseline; every model of a molecule starts its R MD
runs from the same R test frames with the same momenta (``md.seed``; ``sake_md.md.stability.protocol_setup``
draws them from that seed alone), and a run that ends intact is cut off (censored) at the run length.
Hence:

* errors: one value per model; the unit of replication is the seed, so effects are per-seed **paired
  differences** with an exact **sign-flip permutation test** (all 2^S sign patterns; its smallest two-sided
  p is 2^(1 - S): 0.25 for 3 seeds, 0.0625 for 5) and a t-interval of the mean difference;
* many such tests in one report: **Holm**'s step-down adjustment (controls the family-wise error rate
  under any dependence between the tests);
* stability: **Kaplan–Meier** survival of the time to collapse, intact runs censored at the run length;
  compared between two variants by the **restricted mean survival time** (RMST: with a common cut-off it is
  the mean of the recorded stability times, the area under the KM curve) paired by seed, each seed's
  difference averaged over the shared start frames and momenta, with the same exact sign-flip test over
  seeds. Not a log-rank test over trajectories: that treats the R runs of one model as independent, which
  they are not (they share the model, which is what is being compared). Per start frame, wins and losses
  are counted too (a sign test over (seed, start frame) pairs, conditional on these particular models);
* force error against stability: across all models (between- and within-variant differences mixed) and
  **within variants** (values centred on their variant's mean: the repeated-measures correlation of
  Bakdash & Marusich 2017, df = N - G - 1).
"""

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["PairedEffect", "PairedStability", "WithinCorrelation", "holm", "kaplan_meier", "km_median",
           "km_survival_at", "min_sign_flip_p", "paired_effect", "paired_stability", "sign_flip_p", "sign_test_p",
           "within_correlation"]

MAX_EXACT = 20  # 2^20 sign patterns enumerate in well under a second; more seeds than that is not this study


def sign_flip_p(d) -> float:
    """Exact two-sided p of the paired permutation (sign-flip) test of mean(d) = 0.

    ``d`` (n,): paired differences. Under the null each difference is as likely negative as positive, so
    all 2^n sign patterns are equally likely; p = the fraction whose |sum| is at least the observed one.
    Returns 1.0 when every difference is 0."""
    d = np.asarray(d, dtype=float)
    if len(d) == 0 or len(d) > MAX_EXACT:
        raise ValueError(f"sign_flip_p takes 1 to {MAX_EXACT} differences, got {len(d)}")
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))  # (2^n, n)
    sums = np.abs(signs @ d)
    observed = abs(d.sum())
    return float(np.mean(sums >= observed - 1e-12 * max(1.0, observed)))


def min_sign_flip_p(n: int) -> float:
    """The smallest p the exact two-sided sign-flip test can give with n pairs: 2 / 2^n."""
    return 2.0 ** (1 - n)


@dataclass
class PairedEffect:
    """Per-seed paired differences a_k - b_k (``diffs``, shape (n,)), their mean with the 95% t-interval
    (NaN where n < 2), the exact sign-flip p (None where n < 2) and the smallest p attainable with n."""

    n: int
    diffs: np.ndarray
    mean: float
    lo: float
    hi: float
    p: float | None
    min_p: float | None


def paired_effect(a, b) -> PairedEffect:
    """``a``, ``b`` (n,): one value per seed, seed k of ``a`` paired with seed k of ``b``. Non-finite pairs
    are dropped."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    d = (a - b)[np.isfinite(a - b)]
    n = len(d)
    if n == 0:
        return PairedEffect(0, d, math.nan, math.nan, math.nan, None, None)
    mean = float(d.mean())
    if n == 1:
        return PairedEffect(1, d, mean, math.nan, math.nan, None, None)
    half = float(stats.t.ppf(0.975, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return PairedEffect(n, d, mean, mean - half, mean + half, sign_flip_p(d), min_sign_flip_p(n))


def holm(pvalues) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the input order; None entries (no test) stay None and do not
    count in the family. With m tests sorted p_(1) <= ... <= p_(m): adj_(i) = max_{j<=i} min(1, (m-j+1) p_(j))."""
    index = [k for k, p in enumerate(pvalues) if p is not None]
    m = len(index)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, k in enumerate(sorted(index, key=lambda k: pvalues[k])):
        running = max(running, min(1.0, (m - rank) * pvalues[k]))
        adjusted[k] = running
    return adjusted


def kaplan_meier(times, events) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier estimate of survival. ``times`` (n,): time to collapse, or to the end of an intact run;
    ``events`` (n,) bool: True where the run collapsed, False where it was censored (intact at its end).

    Returns (t, S), both (k,): the distinct collapse times and the survival just after each; S = 1 before
    t[0]. A run censored at the same time as a collapse counts as at risk for it (the usual convention)."""
    times, events = np.asarray(times, dtype=float), np.asarray(events, dtype=bool)
    t = np.unique(times[events])
    survival, s = [], 1.0
    for when in t:
        at_risk = np.sum(times >= when)
        died = np.sum((times == when) & events)
        s *= 1.0 - died / at_risk
        survival.append(s)
    return t, np.asarray(survival, dtype=float)


def km_survival_at(t, s, when: float) -> float:
    """S(when) of a Kaplan–Meier step function (``t``, ``s`` from ``kaplan_meier``)."""
    before = np.asarray(t) <= when
    return float(np.asarray(s)[before][-1]) if before.any() else 1.0


def km_median(t, s) -> float | None:
    """The median time to collapse: the first time S drops to 0.5 or below; None when it never does (more
    than half the runs intact at the end: the median is beyond the run length)."""
    below = np.asarray(s) <= 0.5
    return float(np.asarray(t)[below][0]) if below.any() else None


def sign_test_p(wins: int, losses: int) -> float | None:
    """Exact two-sided binomial sign test of wins against losses (ties left out); None with no untied pair."""
    n = wins + losses
    if n == 0:
        return None
    return float(min(1.0, 2 * stats.binom.cdf(min(wins, losses), n, 0.5)))


@dataclass
class PairedStability:
    """Two variants' stability, paired. ``effect``: the per-seed RMST differences (a - b, ps) and their exact
    sign-flip test over seeds; ``wins``/``losses``/``ties``: (seed, start frame) pairs where a outlasted b,
    the reverse, or equal (both intact, or collapsed at the same frame); ``frame_p``: the sign test over those
    pairs, conditional on the models (their runs are not independent replicates of the variant)."""

    effect: PairedEffect
    wins: int
    losses: int
    ties: int
    frame_p: float | None


def paired_stability(a, b) -> PairedStability:
    """``a``, ``b`` (S, R): stability times (ps, censored at the common run length) of S seeds × R start
    frames, the same start frames and momenta in the same order for both."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired stability takes two (seeds, start frames) arrays, got {a.shape} and {b.shape}")
    effect = paired_effect(a.mean(axis=1), b.mean(axis=1))
    wins, losses = int(np.sum(a > b)), int(np.sum(a < b))
    return PairedStability(effect, wins, losses, a.size - wins - losses, sign_test_p(wins, losses))


@dataclass
class WithinCorrelation:
    """Pearson r of values centred on their group's mean, its p (t with ``df`` = N - G - 1) and N, G."""

    r: float
    p: float
    df: int
    n: int
    groups: int


def within_correlation(x, y, groups) -> WithinCorrelation | None:
    """The repeated-measures (within-group) correlation of ``x`` and ``y`` (N,), groups given by ``groups``
    (N,) labels: the common slope of y on x inside groups, free of differences between the groups' means.
    None when df < 1 or nothing varies within the groups."""
    x, y, groups = np.asarray(x, dtype=float), np.asarray(y, dtype=float), np.asarray(groups)
    labels = list(dict.fromkeys(groups.tolist()))
    dx, dy = x.copy(), y.copy()
    for g in labels:
        inside = groups == g
        dx[inside] -= x[inside].mean()
        dy[inside] -= y[inside].mean()
    df = len(x) - len(labels) - 1
    if df < 1 or not np.any(dx) or not np.any(dy):
        return None
    r = float(np.sum(dx * dy) / math.sqrt(np.sum(dx * dx) * np.sum(dy * dy)))
    t = r * math.sqrt(df / max(1e-300, 1 - r * r))
    return WithinCorrelation(r, float(2 * stats.t.sf(abs(t), df)), df, len(x), len(labels))
