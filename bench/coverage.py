"""Coverage of the report's comparison intervals (misfit.report.paired), by simulation: 200
studies of the design of params.yaml (the main draw with 5 seeds, 4 further draws with 2),
each drawing draw, seed, run and test-image noise afresh, for a family of six comparisons;
then the same with one comparison's runs 4x noisier than the others'. Prints the share of
intervals that cover the true difference.

    PYTHONPATH=src:tests python bench/coverage.py
"""
import numpy as np
from test_paired import simulate_family

from misfit.report.paired import decide, pooled_components

TRUE = np.array([0.0, 0.002, -0.003, 0.001, 0.004, 0.0])
STUDIES = 200


def homogeneous(rng) -> tuple[float, float]:
    single, family = [], []
    for _ in range(STUDIES):
        pairs = simulate_family(rng, TRUE, 0.0015, 0.001, 0.002, 0.02)
        components = pooled_components(pairs)
        alone = [decide(p, components, 0.005, 0.05, 1, 0.8) for p in pairs]
        together = [decide(p, components, 0.005, 0.05, len(TRUE), 0.8) for p in pairs]
        single += [d.low <= t <= d.high for d, t in zip(alone, TRUE)]
        family.append(all(d.low <= t <= d.high for d, t in zip(together, TRUE)))
    return float(np.mean(single)), float(np.mean(family))


def one_noisier(rng) -> tuple[float, float]:
    noisy, others = [], []
    for _ in range(STUDIES):
        pairs = simulate_family(rng, TRUE, 0.0015, 0.001, 0.002, 0.02)
        pairs[0] = simulate_family(rng, TRUE[:1], 0.0015, 0.001, 0.008, 0.02)[0]
        components = pooled_components(pairs)
        decisions = [decide(p, components, 0.005, 0.05, 1, 0.8) for p in pairs]
        noisy.append(decisions[0].low <= TRUE[0] <= decisions[0].high)
        others += [d.low <= t <= d.high for d, t in zip(decisions[1:], TRUE[1:])]
    return float(np.mean(noisy)), float(np.mean(others))


if __name__ == "__main__":
    single, family = homogeneous(np.random.default_rng(11))
    print(f"{STUDIES} studies, 6 comparisons: single 95% intervals cover {single:.1%}, "
          f"the simultaneous family covers all six {family:.1%}")
    noisy, others = one_noisier(np.random.default_rng(5))
    print(f"one comparison 4x noisier: it is covered {noisy:.1%}, the others {others:.1%}")
