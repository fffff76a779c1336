"""Two cells compared over every data draw, so that a claim is about the task, not about one
draw of 5,000 images, these seeds or these 10,000 test images.

- Runs are paired by (draw, seed): seed s starts from the same weights and shuffles the same
  way on every draw, so seed and draw are crossed factors, not nested ones.
- The paired differences' variance comes from draw and seed as crossed random effects plus
  a residual (statsmodels' MixedLM variance components, REML), pooled over a task's
  comparisons: one comparison alone has 5 draws, so 4 degrees of freedom for its draw part.
- The test set's own noise: every run is scored on the same 10,000 images, so their sampling
  error is shared by all runs and no number of runs averages it away. Its variance is that of
  the per-image differences (averaged over the pairs) over the number of images.
- Accuracy is compared as a difference of shares; MSE as a log ratio (its spread grows with its
  size, and its margin is relative).
- One rule decides, at the family-wise level alpha over the task's k comparisons (Bonferroni,
  so interval and test agree): *differs* when the (1 - alpha/k) interval excludes 0,
  *equivalent* when the (1 - 2 alpha/k) interval lies within ±margin (two one-sided tests),
  both when a difference is shown but is smaller than the margin, else *undecided*, with the
  runs per cell that would decide it, if any number would.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

ACCURACY, MSE = "accuracy", "mse"
DIFFERS, EQUIVALENT, DIFFERS_WITHIN, UNDECIDED = "differs", "equivalent", "differs, within the margin", "undecided"
RUNS_SHOWN_CAP = 10_000  # beyond this the answer is "more runs than anyone would train"


@dataclass(frozen=True)
class Scores:
    """One run's test score: the metric, and its per-image terms (share correct, or squared error)."""
    value: float
    per_image: np.ndarray


@dataclass(frozen=True)
class Pairs:
    """One comparison's paired runs, on the analysis scale (a difference of shares, or a log ratio)."""
    draws: np.ndarray
    seeds: np.ndarray
    deltas: np.ndarray
    image_variance: float  # variance of the mean difference from the test images' sampling alone

    @property
    def n(self) -> int:
        return len(self.deltas)

    @property
    def estimate(self) -> float:
        return float(self.deltas.mean())


def image_sampling_variance(terms: np.ndarray) -> float:
    """From the per-image terms of each pair ([pairs, images]): the variance the test images'
    sampling adds to the mean difference, sigma_image^2 / images.

    A two-way (pair x image) random-effects ANOVA: the image mean square also holds the
    pair-by-image interaction, which the runs' own variance already counts (each run's score
    averages it over these images), so it is taken out: sigma_image^2 = (MS_image - MS_residual) / pairs.
    """
    pairs, images = terms.shape
    image_means = terms.mean(axis=0)
    if pairs < 2:
        return float(image_means.var(ddof=1) / images)
    residual = terms - terms.mean(axis=1, keepdims=True) - image_means[None, :] + terms.mean()
    ms_image = pairs * image_means.var(ddof=1)
    ms_residual = float((residual ** 2).sum() / ((pairs - 1) * (images - 1)))
    return max(0.0, (ms_image - ms_residual) / pairs) / images


def pair_up(cell: dict[tuple[int, int], Scores], other: dict[tuple[int, int], Scores], metric: str) -> Pairs:
    """cell minus other, over the (draw, seed) both have; log(MSE ratio) for MSE."""
    keys = sorted(set(cell) & set(other))
    if not keys:
        raise ValueError("the two cells share no (draw, seed) run")
    deltas, terms = [], []
    for key in keys:
        a, b = cell[key], other[key]
        if metric == MSE:
            deltas.append(math.log(a.value) - math.log(b.value))
            # the influence of each image on log(mean): its term over the mean (the delta method)
            terms.append(a.per_image / a.value - b.per_image / b.value)
        else:
            deltas.append(a.value - b.value)
            terms.append(a.per_image - b.per_image)
    return Pairs(np.array([k[0] for k in keys]), np.array([k[1] for k in keys]), np.array(deltas),
                 image_sampling_variance(np.array(terms)))


@dataclass(frozen=True)
class Components:
    """Variance components of paired differences, pooled over a task's comparisons."""
    draw: float
    seed: float
    residual: float
    df: int  # degrees of freedom of the intervals: comparisons pooled x (draws - 1)
    comparisons: int
    method: str

    def variance_of_mean(self, draws: np.ndarray, seeds: np.ndarray) -> float:
        """Var of the plain mean over runs at (draws[i], seeds[i]): each draw's and each
        seed's effect weighs by the share of runs it touches."""
        n = len(draws)
        draw_weight = sum((np.sum(draws == d) / n) ** 2 for d in np.unique(draws))
        seed_weight = sum((np.sum(seeds == s) / n) ** 2 for s in np.unique(seeds))
        return self.draw * draw_weight + self.seed * seed_weight + self.residual / n


def pooled_components(comparisons: list[Pairs]) -> Components:
    """Draw, seed and residual variance of the differences, one set for all `comparisons`
    (each its own mean; draw and seed effects independent between comparisons)."""
    import pandas as pd
    import statsmodels.formula.api as smf

    frame = pd.DataFrame([{"comparison": i, "draw": int(d), "seed": int(s), "delta": float(x)}
                          for i, p in enumerate(comparisons) for d, s, x in zip(p.draws, p.seeds, p.deltas)])
    draws = max(len(np.unique(p.draws)) for p in comparisons)
    df = max(1, len(comparisons) * (draws - 1))
    scale = float(frame["delta"].std()) or 1.0
    frame["delta"] /= scale  # REML converges on numbers near 1, not on differences of 1e-4
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = smf.mixedlm("delta ~ 0 + C(comparison)", frame, groups="comparison", re_formula="0",
                              vc_formula={"draw": "0 + C(draw)", "seed": "0 + C(seed)"}).fit(reml=True)
        draw, seed = (max(0.0, float(v)) * scale ** 2 for v in fit.vcomp)
        residual = float(fit.scale) * scale ** 2
        if not all(math.isfinite(v) for v in (draw, seed, residual)):
            raise ValueError("non-finite variance component")
        return Components(draw, seed, residual, df, len(comparisons), "REML, crossed draw and seed")
    except (ValueError, np.linalg.LinAlgError):
        # a fit on its boundary or singular: every run independent (the residual carries all)
        residual = float(np.mean([p.deltas.var(ddof=1) for p in comparisons if p.n > 1]))
        return Components(0.0, 0.0, residual, df, len(comparisons), "runs as independent (the REML fit failed)")


@dataclass(frozen=True)
class Decision:
    estimate: float  # on the analysis scale
    se_runs: float
    se_images: float
    low: float  # the simultaneous (1 - alpha/k) interval
    high: float
    p_adjusted: float  # two-sided, Bonferroni over k
    tost_p_adjusted: float  # the larger one-sided p against ±margin, Bonferroni over k
    verdict: str
    runs_to_decide: int | None  # per cell, at the design's mix of draws and seeds
    why_no_runs: str | None  # when no number of runs would decide it

    @property
    def se(self) -> float:
        return math.hypot(self.se_runs, self.se_images)


def heterogeneity(pairs: Pairs, components: Components) -> float:
    """How much noisier this comparison's runs are than the task's pooled components say (at
    least 1): a comparison with a noisy cell keeps its own spread instead of borrowing the
    task's, so pooling never narrows an interval below what its own runs show."""
    pooled = components.draw + components.seed + components.residual
    if pairs.n < 2 or pooled <= 0:
        return 1.0
    return max(1.0, float(pairs.deltas.var(ddof=1)) / pooled)


def decide(pairs: Pairs, components: Components, margin: float, alpha: float, k: int, power: float) -> Decision:
    """The verdict on one comparison of a family of k."""
    from scipy import stats

    t = stats.t(components.df)
    estimate = pairs.estimate
    se_runs = math.sqrt(components.variance_of_mean(pairs.draws, pairs.seeds) * heterogeneity(pairs, components))
    se_images = math.sqrt(pairs.image_variance)
    se = math.hypot(se_runs, se_images)
    two_sided, one_sided = t.ppf(1 - alpha / (2 * k)), t.ppf(1 - alpha / k)
    low, high = estimate - two_sided * se, estimate + two_sided * se
    if se == 0:
        p = 0.0 if estimate else 1.0
        tost = 0.0 if abs(estimate) < margin else 1.0
    else:
        p = 2 * t.sf(abs(estimate) / se)
        tost = max(t.sf((estimate + margin) / se), t.sf((margin - estimate) / se))
    differs = low > 0 or high < 0
    equivalent = -margin < estimate - one_sided * se and estimate + one_sided * se < margin
    verdict = (DIFFERS_WITHIN if differs and equivalent else DIFFERS if differs else
               EQUIVALENT if equivalent else UNDECIDED)
    runs, why = (None, None) if verdict != UNDECIDED else runs_to_decide(
        estimate, se_runs, se_images, pairs.n, margin, Quantiles(alpha, k, power), components.df)
    return Decision(estimate, se_runs, se_images, low, high, min(1.0, k * p), min(1.0, k * tost),
                    verdict, runs, why)


@dataclass(frozen=True)
class Quantiles:
    """The critical values of a family's verdicts at df degrees of freedom (inf: normal)."""
    alpha: float
    k: int
    power: float

    def at(self, df: float) -> tuple[float, float, float]:
        """(two-sided, one-sided, power) quantiles."""
        from scipy import stats

        law = stats.norm if math.isinf(df) else stats.t(df)
        return (float(law.ppf(1 - self.alpha / (2 * self.k))), float(law.ppf(1 - self.alpha / self.k)),
                float(law.ppf(self.power)))


def runs_to_decide(estimate: float, se_runs: float, se_images: float, n: int, margin: float,
                   quantiles: Quantiles, df: int) -> tuple[int | None, str | None]:
    """Runs per cell at which, were the true difference `estimate`, the verdict would come
    with the given power: a difference shown, or equivalence, whichever needs fewer.

    More runs at this mix of draws and seeds shrink the runs' part of the error as 1/n and
    add degrees of freedom in proportion (df grows with the draws); the test images' part
    stays, so some differences no number of runs can decide: those that even the normal
    quantiles (infinitely many runs) leave inside the test set's noise."""
    if needed_runs(estimate, se_runs, se_images, n, margin, quantiles.at(math.inf)) is None:
        return None, (f"the test set's own noise (±{se_images:.2g} on this scale) is as large as what would "
                      "decide it: more runs cannot, a larger test set could")

    def enough(runs: int) -> bool:  # `runs` per cell suffice at the df that many runs would give
        needed = needed_runs(estimate, se_runs, se_images, n, margin, quantiles.at(max(df, df * runs / n)))
        return needed is not None and needed <= runs

    low, high = n, n + 1
    while not enough(high):  # doubling, then bisection: `enough` holds from some number of runs on
        low, high = high, high * 2
        if high > RUNS_SHOWN_CAP:
            return None, f"more than {RUNS_SHOWN_CAP:,} runs per cell"
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high, None


def needed_runs(estimate: float, se_runs: float, se_images: float, n: int, margin: float,
                quantiles: tuple[float, float, float]) -> int | None:
    """The textbook sample size at fixed quantiles, n' = n se_runs^2 / (target^2 - se_images^2),
    target = d / (z_alpha + z_power), for a difference shown or for equivalence (the fewer);
    None where the test images' noise alone is already too large."""
    two_sided, one_sided, power_quantile = quantiles
    needed = []
    for target in (abs(estimate) / (two_sided + power_quantile), (margin - abs(estimate)) / (one_sided + power_quantile)):
        room = target ** 2 - se_images ** 2
        if target > 0 and room > 0 and se_runs > 0:
            needed.append(math.ceil(n * se_runs ** 2 / room))
    return min(needed) if needed else None


def probability_of_improvement(cell: list[float], other: list[float], higher_is_better: bool,
                               resamples: int, seed: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """P(a run of `cell` scores better than a run of `other`), ties counting half (the
    Mann-Whitney statistic over the runs, as rliable reports it), with a percentile bootstrap
    interval over runs. It is about these test images: their noise is not in it."""
    from scipy import stats

    def statistic(x, y, axis=-1):
        x, y = np.asarray(x)[..., :, None], np.asarray(y)[..., None, :]
        better = (x > y) if higher_is_better else (x < y)
        return (better + 0.5 * (x == y)).mean(axis=(-2, -1))

    point = float(statistic(np.array(cell), np.array(other)))
    if len(set(cell) | set(other)) == 1:
        return point, point, point
    result = stats.bootstrap((np.array(cell), np.array(other)), statistic, n_resamples=resamples,
                             confidence_level=confidence, method="percentile", vectorized=True,
                             rng=np.random.default_rng(seed))
    return point, float(result.confidence_interval.low), float(result.confidence_interval.high)


def margin_on_scale(metric: str, accuracy_margin: float, mse_ratio: float) -> float:
    """The equivalence margin on the analysis scale: a share for accuracy, log(1 + r) for MSE."""
    return accuracy_margin if metric == ACCURACY else math.log1p(mse_ratio)


def to_metric(value: float, metric: str) -> float:
    """An estimate or bound back in the metric's terms: a difference of shares, or a ratio."""
    return math.exp(value) if metric == MSE else value
