"""The comparisons a task needs, the seeds' claims decided on them, and the study's own
findings (misfit.report.compare, claims, conclude), on cells built here with known numbers."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import report_run

from misfit.core.config import ReportConfig
from misfit.report.cells import Cell
from misfit.report.claims import FAILS, HOLDS, UNDECIDED, Claim, decide_claim
from misfit.report.compare import LearnedShare, advantage, compare_task, family_pairs
from misfit.report.conclude import multilabel_softmax_ceiling
from misfit.report.modes import CONSTANT, LEARNED, Outcome

DESIGN = [(0, s) for s in range(5)] + [(d, s) for d in range(1, 5) for s in range(2)]
CONFIG = ReportConfig(alpha=0.05, power=0.8, margins={"accuracy": 0.005, "mse_ratio": 0.1},
                      bootstrap_resamples=200, bootstrap_seed=0)
IMAGES = 4000


def make_cell(root, cell_id: str, accuracy: float, rng, mode: str = LEARNED, spread: float = 0.001,
              modes_by_seed: dict[int, str] | None = None) -> Cell:
    """A cell whose runs score about `accuracy` on IMAGES test images, each image right or
    wrong, with a per-image file as the evaluate stage writes it."""
    runs, rows = [], []
    for draw, seed in DESIGN:
        run_mode = (modes_by_seed or {}).get(seed, mode)
        p = float(np.clip(accuracy + rng.normal(0, spread), 0, 1))
        per_image = (rng.random(IMAGES) < p).astype(float)
        rows.append(per_image)
        runs.append(report_run(seed, draw, float(per_image.mean()),
                               Outcome(run_mode, "digit 1" if run_mode == CONSTANT else "")))
    (root / "predictions").mkdir(exist_ok=True)
    np.savez(root / "predictions" / f"{cell_id}.npz", subset_seeds=np.array([d for d, _ in DESIGN]),
             seeds=np.array([s for _, s in DESIGN]), per_image=np.array(rows))
    task = cell_id.split("-")[0]
    return Cell(cell_id, task, "accuracy", cell_id.split("-")[1], None,
                [r for r in runs if r.subset_seed == 0], [r for r in runs if r.subset_seed != 0])


@pytest.fixture
def binary(tmp_path):
    rng = np.random.default_rng(1)
    cells = {
        "binary-softmax-ce": make_cell(tmp_path, "binary-softmax-ce", 0.970, rng),
        "binary-softmax-bce": make_cell(tmp_path, "binary-softmax-bce", 0.970, rng),
        "binary-softmax-mse": make_cell(tmp_path, "binary-softmax-mse", 0.900, rng),
        "binary-sigmoid-mse": make_cell(tmp_path, "binary-sigmoid-mse", 0.5, rng, mode=CONSTANT),
    }
    return tmp_path, cells


def test_a_pair_both_studies_and_a_claim_need_is_compared_once(binary):
    _, cells = binary
    pairs = family_pairs("binary", cells, [("binary-softmax-ce", "binary-softmax-bce")])
    assert len({frozenset(p) for p in pairs}) == len(pairs)
    assert ("binary-softmax-bce", "binary-softmax-ce") in pairs  # S0's, against its ✅ reference


def test_claims_decide_from_the_comparisons(binary):
    root, cells = binary
    comparisons = compare_task(root, "binary", cells, [("binary-softmax-bce", "binary-softmax-mse")], CONFIG)
    assert all(c["family_size"] == len(comparisons) for c in comparisons)
    alike = decide_claim(Claim("a", "s", "alike", "alike", ("binary-softmax-ce", "binary-softmax-bce")),
                         cells, comparisons)
    # the same accuracy on 13 runs of 4,000 images: equivalence within ±0.5 points is not yet shown
    assert alike["verdict"] in (HOLDS, UNDECIDED)
    if alike["verdict"] == UNDECIDED:
        assert alike["runs_to_decide"] or alike["why_no_runs"]
    not_alike = decide_claim(Claim("b", "s", "alike", "alike", ("binary-softmax-ce", "binary-softmax-mse")),
                             cells, comparisons)
    assert not_alike["verdict"] == FAILS  # 7 points apart, far beyond the margin
    better = decide_claim(Claim("c", "s", "better", "better", ("binary-softmax-ce",), ("binary-softmax-mse",)),
                          cells, comparisons)
    assert better["verdict"] == HOLDS
    reverse = decide_claim(Claim("d", "s", "better", "better", ("binary-softmax-mse",), ("binary-softmax-ce",)),
                           cells, comparisons)
    assert reverse["verdict"] == FAILS
    best = decide_claim(Claim("e", "s", "best", "best", ("binary-softmax-ce",),
                              ("binary-softmax-mse", "binary-sigmoid-mse")), cells, comparisons)
    assert best["verdict"] == HOLDS  # better than one, learns where the other never does
    learns = decide_claim(Claim("f", "s", "learns", "learns", ("binary-sigmoid-mse",)), cells, comparisons)
    never = decide_claim(Claim("g", "s", "never", "never_learns", ("binary-sigmoid-mse",)), cells, comparisons)
    assert learns["verdict"] == FAILS and never["verdict"] == HOLDS


def test_a_mode_comparison_orients_by_who_learned(binary):
    root, cells = binary
    comparisons = compare_task(root, "binary", cells, [], CONFIG)
    entry = next(c for c in comparisons if "binary-sigmoid-mse" in (c["cell"], c["other"]))
    assert entry["kind"] == "modes" and entry["verdict"] == "differs"
    assert advantage(comparisons, "binary-softmax-ce", "binary-sigmoid-mse").better
    assert advantage(comparisons, "binary-sigmoid-mse", "binary-softmax-ce").worse


def test_a_seed_that_decides_the_mode_on_every_draw_is_one_trial(tmp_path):
    rng = np.random.default_rng(0)
    cell = make_cell(tmp_path, "regression-relu-mse-raw", 0.9, rng, modes_by_seed={1: CONSTANT, 3: CONSTANT})
    share = LearnedShare.of(cell)
    assert (share.learned, share.trials, share.unit) == (3, 5, "seed")  # not 8 of 13 runs


def test_the_multilabel_softmax_ceiling_by_hand():
    # one label: reachable; two labels: one wrong of 4; none: all right; three: two wrong
    targets = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], float)
    assert multilabel_softmax_ceiling(targets) == pytest.approx(1 - 3 / 16)


def test_a_cell_whose_every_run_ends_the_same_way_counts_each_run(tmp_path):
    """No seed or draw effect to cluster by: 13 runs, 13 trials. Against a cell that always
    learns, one that never does is shown different (p of 13/13 against 0/13, not of 5/5 against 0/5)."""
    rng = np.random.default_rng(2)
    never = make_cell(tmp_path, "binary-sigmoid-mse", 0.5, rng, mode=CONSTANT)
    always = make_cell(tmp_path, "binary-softmax-ce", 0.97, rng)
    assert (LearnedShare.of(never).trials, LearnedShare.of(never).unit) == (13, "run")
    comparisons = compare_task(tmp_path, "binary", {c.cell_id: c for c in (never, always)}, [], CONFIG)
    (entry,) = comparisons
    assert entry["kind"] == "modes" and entry["p_adjusted"] < 1e-6 and entry["verdict"] == "differs"
