"""The comparison statistics (misfit.report.paired) against textbook values, and by
simulation, the coverage of their intervals."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from misfit.report.paired import (
    DIFFERS,
    EQUIVALENT,
    MSE,
    UNDECIDED,
    Components,
    Pairs,
    Quantiles,
    Scores,
    decide,
    image_sampling_variance,
    pair_up,
    pooled_components,
    probability_of_improvement,
    runs_to_decide,
)

# the study's design: the main draw with 5 seeds, 4 further draws with seeds 0 and 1
DESIGN = [(0, s) for s in range(5)] + [(d, s) for d in range(1, 5) for s in range(2)]


def test_variance_of_the_mean_in_a_balanced_crossed_design_is_the_textbook_one():
    """D draws x S seeds, each once: Var(mean) = s_draw^2 / D + s_seed^2 / S + s_e^2 / (D S)."""
    draws, seeds = np.repeat(np.arange(4), 3), np.tile(np.arange(3), 4)
    components = Components(draw=2.0, seed=3.0, residual=5.0, df=3, comparisons=1, method="given")
    assert components.variance_of_mean(draws, seeds) == pytest.approx(2.0 / 4 + 3.0 / 3 + 5.0 / 12)


def test_runs_on_one_draw_keep_its_whole_variance():
    draws, seeds = np.zeros(5, int), np.arange(5)
    components = Components(draw=2.0, seed=0.0, residual=5.0, df=4, comparisons=1, method="given")
    assert components.variance_of_mean(draws, seeds) == pytest.approx(2.0 + 5.0 / 5)


def paired(deltas, draws=None, seeds=None, images=None) -> Pairs:
    deltas = np.asarray(deltas, float)
    n = len(deltas)
    return Pairs(np.zeros(n, int) if draws is None else np.asarray(draws),
                 np.arange(n) if seeds is None else np.asarray(seeds), deltas,
                 0.0 if images is None else images)


def test_one_comparison_with_independent_runs_is_the_paired_t_interval_and_tost():
    """No draw or seed component, no image noise, df n - 1, k = 1: scipy's paired t interval
    and p, and statsmodels' paired TOST."""
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(3)
    a, b = rng.normal(0.97, 0.002, 8), rng.normal(0.968, 0.002, 8)
    pairs = paired(a - b)
    components = Components(0.0, 0.0, float(np.var(a - b, ddof=1)), df=7, comparisons=1, method="given")
    decision = decide(pairs, components, margin=0.005, alpha=0.05, k=1, power=0.8)
    test = stats.ttest_rel(a, b)
    interval = test.confidence_interval(0.95)
    assert decision.low == pytest.approx(interval.low) and decision.high == pytest.approx(interval.high)
    assert decision.p_adjusted == pytest.approx(test.pvalue)
    assert decision.tost_p_adjusted == pytest.approx(ttost_paired(a, b, -0.005, 0.005)[0])


def test_bonferroni_widens_the_interval_and_multiplies_p():
    pairs = paired([0.001, 0.003, 0.002, 0.004, 0.0025])
    components = Components(0.0, 0.0, float(np.var(pairs.deltas, ddof=1)), df=4, comparisons=1, method="given")
    one, seven = (decide(pairs, components, 0.005, 0.05, k, 0.8) for k in (1, 7))
    assert seven.p_adjusted == pytest.approx(min(1.0, 7 * one.p_adjusted))
    half = stats.t(4).ppf(1 - 0.05 / 14) * one.se
    assert seven.high - seven.estimate == pytest.approx(half)


def test_the_verdicts():
    tight = Components(0.0, 0.0, 1e-8, df=40, comparisons=10, method="given")
    wide = Components(0.0, 0.0, 1e-4, df=40, comparisons=10, method="given")
    assert decide(paired([0.02] * 13), tight, 0.005, 0.05, 5, 0.8).verdict == DIFFERS
    assert decide(paired([0.0001] * 13), tight, 0.005, 0.05, 5, 0.8).verdict == "differs, within the margin"
    assert decide(paired([0.0] * 13), tight, 0.005, 0.05, 5, 0.8).verdict == EQUIVALENT
    undecided = decide(paired([0.004] * 13), wide, 0.005, 0.05, 5, 0.8)
    assert undecided.verdict == UNDECIDED and undecided.runs_to_decide > 13


def test_runs_to_decide_solves_the_power_equation():
    """With no image noise, normal quantiles (df infinite) and the estimate on the margin (so
    equivalence is out of reach): n' = n se^2 / (d / (z_a + z_b))^2, the textbook sample size."""
    z_a, z_b = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    runs, why = runs_to_decide(estimate=0.002, se_runs=0.001, se_images=0.0, n=13, margin=0.002,
                               quantiles=Quantiles(0.05, 1, 0.8), df=math.inf)
    assert why is None and runs == math.ceil(13 * 0.001 ** 2 / (0.002 / (z_a + z_b)) ** 2)


def test_runs_to_decide_counts_the_degrees_of_freedom_more_runs_bring():
    """At finite df the answer is the fewest runs n' that suffice at the t quantiles of the
    design n' runs would make (df x n'/n): n' suffices, n' - 1 does not."""
    quantiles, n, df, se_runs, estimate = Quantiles(0.05, 6, 0.8), 13, 8, 0.004, 0.006

    def required(runs: int) -> float:
        two_sided, _, power = (stats.t(df * runs / n).ppf(q) for q in (1 - 0.05 / 12, 1 - 0.05 / 6, 0.8))
        return n * se_runs ** 2 / (estimate / (two_sided + power)) ** 2

    runs, why = runs_to_decide(estimate, se_runs, 0.0, n, margin=0.005, quantiles=quantiles, df=df)
    assert why is None and required(runs) <= runs and required(runs - 1) > runs - 1
    at_todays_df = math.ceil(n * se_runs ** 2 / (estimate / sum(stats.t(df).ppf(q) for q in (1 - 0.05 / 12, 0.8))) ** 2)
    assert runs < at_todays_df  # the old answer held the df at today's 8


def test_a_difference_smaller_than_the_test_sets_noise_cannot_be_decided_by_runs():
    runs, why = runs_to_decide(estimate=0.001, se_runs=0.001, se_images=0.003, n=13, margin=0.0012,
                               quantiles=Quantiles(0.05, 1, 0.8), df=8)
    assert runs is None and "test set" in why


def test_more_runs_can_decide_what_only_todays_small_df_leaves_to_the_test_set():
    """The limit is the normal quantiles: a difference the t quantiles at today's df would put
    inside the test set's noise is still decidable by runs, which bring degrees of freedom."""
    quantiles, se_images, estimate = Quantiles(0.05, 8, 0.8), 0.031, 0.137
    two_t, _, power_t = quantiles.at(8)
    two_z, _, power_z = quantiles.at(math.inf)
    assert estimate / (two_t + power_t) < se_images < estimate / (two_z + power_z)
    runs, why = runs_to_decide(estimate, 0.05, se_images, 13, margin=0.0953, quantiles=quantiles, df=8)
    assert why is None and runs > 13


def test_mse_is_compared_as_a_log_ratio_with_delta_method_image_terms():
    rng = np.random.default_rng(0)
    errors = {key: rng.exponential(0.1, 1000) for key in DESIGN}
    other = {key: rng.exponential(0.1, 1000) * 1.2 for key in DESIGN}
    cell = {key: Scores(float(e.mean()), e) for key, e in errors.items()}
    reference = {key: Scores(float(e.mean()), e) for key, e in other.items()}
    pairs = pair_up(cell, reference, MSE)
    assert pairs.estimate == pytest.approx(np.mean([math.log(cell[k].value / reference[k].value) for k in DESIGN]))
    assert pairs.estimate == pytest.approx(math.log(1 / 1.2), abs=0.05)
    assert pairs.image_variance > 0


def test_the_test_sets_variance_leaves_out_the_pair_by_image_interaction():
    """Terms = image effect + pair x image noise: sigma_image^2 / images is recovered, where the
    plain variance of the image means would add the noise's share a second time."""
    rng = np.random.default_rng(5)
    images = rng.normal(0, 0.3, 20000)
    terms = images[None, :] + rng.normal(0, 1.0, (13, 20000))
    assert image_sampling_variance(terms) * 20000 == pytest.approx(0.09, rel=0.1)
    assert terms.mean(axis=0).var(ddof=1) == pytest.approx(0.09 + 1 / 13, rel=0.1)


def test_probability_of_improvement_is_the_mann_whitney_share():
    x, y = [3.0, 4.0, 5.0], [1.0, 4.0, 2.0]
    point, low, high = probability_of_improvement(x, y, True, 500, 0)
    u = stats.mannwhitneyu(x, y).statistic
    assert point == pytest.approx(u / 9) and low <= point <= high
    assert probability_of_improvement(x, y, False, 500, 0)[0] == pytest.approx(1 - u / 9)


def simulate_family(rng, true_deltas, sd_draw, sd_seed, sd_run, sd_image, n_images=400):
    """Runs of a reference and of each cell on DESIGN, crossed draw and seed effects per
    cell, one shared set of test images whose difficulty each cell answers differently."""
    families = []
    image_effect = rng.normal(0, sd_image, (len(true_deltas), n_images))  # the test set's draw
    for c, delta in enumerate(true_deltas):
        draw, seed = rng.normal(0, sd_draw, 5), rng.normal(0, sd_seed, 5)
        deltas = np.array([delta + draw[d] + seed[s] + rng.normal(0, sd_run) for d, s in DESIGN])
        # each pair's per-image differences: the image effect, the run's shift, per-run noise
        per_image = (image_effect[c][None, :] + deltas[:, None]
                     + rng.normal(0, sd_image, (len(DESIGN), n_images)))
        families.append(Pairs(np.array([d for d, _ in DESIGN]), np.array([s for _, s in DESIGN]),
                              per_image.mean(axis=1), image_sampling_variance(per_image)))
    return families


@pytest.mark.slow
def test_intervals_cover_the_task_level_difference_at_their_level():
    """The estimand is the difference over new draws, seeds and test images: each simulated
    family draws all three afresh. Individual 95% intervals (k = 1) cover it about 95% of the
    time; the simultaneous ones (k = 6) cover all six together at least 95% of the time."""
    rng = np.random.default_rng(2026)
    true = np.array([0.0, 0.002, -0.003, 0.001, 0.004, 0.0])
    single, family_all, sims = [], [], 120
    for _ in range(sims):
        pairs = simulate_family(rng, true, sd_draw=0.0015, sd_seed=0.001, sd_run=0.002, sd_image=0.02)
        components = pooled_components(pairs)
        for k, store in ((1, single), (len(true), family_all)):
            decisions = [decide(p, components, 0.005, 0.05, k, 0.8) for p in pairs]
            covered = [d.low <= t <= d.high for d, t in zip(decisions, true)]
            store.extend(covered) if k == 1 else store.append(all(covered))
    assert 0.92 <= np.mean(single) <= 0.99, np.mean(single)
    assert np.mean(family_all) >= 0.92, np.mean(family_all)


@pytest.mark.slow
def test_equivalence_is_declared_at_most_at_alpha_when_the_difference_sits_on_the_margin():
    rng = np.random.default_rng(7)
    declared, sims = 0, 150
    for _ in range(sims):
        pairs = simulate_family(rng, [0.005, 0.0, 0.001], sd_draw=0.001, sd_seed=0.0005, sd_run=0.001,
                                sd_image=0.005)
        components = pooled_components(pairs)
        declared += decide(pairs[0], components, 0.005, 0.05, 3, 0.8).verdict == EQUIVALENT
    assert declared / sims <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / sims)


def test_a_comparison_noisier_than_the_pool_keeps_its_own_spread():
    calm = Components(0.0, 0.0, 1e-6, df=20, comparisons=5, method="given")
    noisy = paired(np.random.default_rng(0).normal(0.0, 0.01, 13))
    pooled_only = math.sqrt(calm.variance_of_mean(noisy.draws, noisy.seeds))
    decision = decide(noisy, calm, 0.005, 0.05, 1, 0.8)
    assert decision.se_runs == pytest.approx(pooled_only * math.sqrt(np.var(noisy.deltas, ddof=1) / 1e-6))
    quiet = paired(np.full(13, 0.001) + np.random.default_rng(1).normal(0, 1e-5, 13))
    assert decide(quiet, calm, 0.005, 0.05, 1, 0.8).se_runs == pytest.approx(
        math.sqrt(calm.variance_of_mean(quiet.draws, quiet.seeds)))  # never narrower than the pool


@pytest.mark.slow
def test_a_noisier_comparison_is_still_covered():
    """One comparison's runs 4x noisier than the rest of its task: pooled alone, its interval
    would be too narrow; kept at its own spread, it covers (here 98% over 200 simulations)."""
    rng = np.random.default_rng(5)
    true = np.array([0.0, 0.002, -0.003, 0.001, 0.004, 0.0])
    covered = []
    for _ in range(120):
        pairs = simulate_family(rng, true, sd_draw=0.0015, sd_seed=0.001, sd_run=0.002, sd_image=0.02)
        pairs[0] = simulate_family(rng, true[:1], sd_draw=0.0015, sd_seed=0.001, sd_run=0.008, sd_image=0.02)[0]
        decision = decide(pairs[0], pooled_components(pairs), 0.005, 0.05, 1, 0.8)
        covered.append(decision.low <= true[0] <= decision.high)
    assert np.mean(covered) >= 0.92, np.mean(covered)
