"""The findings the report opens with: each seed claim's verdict, then what the study found
that the seeds did not expect. Every finding comes from a rule over results.json's numbers;
none is written for a given cell."""
from __future__ import annotations

import numpy as np

from misfit.core.study import RECOMMENDED, S0, S1, STUDIES
from misfit.report.cells import Cell
from misfit.report.claims import decide_claim, seed_claims
from misfit.report.compare import LearnedShare, advantage, find_comparison, reference_of

# a cell's calibration is called off when its median ECE is this many times its reference's, and above FLOOR
ECE_RATIO, ECE_FLOOR = 2.0, 0.02


def multilabel_softmax_ceiling(multilabel_targets: np.ndarray) -> float:
    """The best accuracy softmax outputs rounded at 0.5 can reach on these targets ([images, 4]):
    softmax sums to 1, so at most one label is switched on, and an image with j labels gets
    at least j - 1 of them wrong."""
    wrong = np.clip(multilabel_targets.sum(axis=1) - 1, 0, None)
    return float(1 - wrong.sum() / multilabel_targets.size)


def claim_findings(cells: dict[str, Cell], comparisons: list[dict]) -> list[dict]:
    return [decide_claim(claim, cells, comparisons) for claim in seed_claims()]


def own_findings(cells: dict[str, Cell], comparisons: list[dict], calibration: dict[str, dict | None],
                 multilabel_targets: np.ndarray) -> list[dict]:
    found = []
    found += _unmarked_winners(cells, comparisons)
    found += _learning(cells)
    found += _ceilings(cells, multilabel_targets)
    found += _calibration(cells, calibration)
    found += _undecidable(comparisons)
    return found


def _unmarked_winners(cells: dict[str, Cell], comparisons: list[dict]) -> list[dict]:
    """A ❌ cell shown better than its study's ✅ reference."""
    found = []
    for study in (S0, S1):
        for cell_id in STUDIES[study]:
            if cell_id not in cells or cell_id in RECOMMENDED[study]:
                continue
            reference = reference_of(study, cells[cell_id].task, cells)
            edge = advantage(comparisons, cell_id, reference) if reference else None
            if edge is not None and edge.better:
                found.append({"kind": "unmarked cell better", "study": study, "cell": cell_id, "other": reference,
                              "comparison": find_comparison(comparisons, cell_id, reference)})
    return found


def _learning(cells: dict[str, Cell]) -> list[dict]:
    """Cells no run of which learned, and lotteries (some runs learned, some did not)."""
    found = []
    for cell_id, cell in cells.items():
        share = LearnedShare.of(cell)
        modes = {}
        for run in cell.runs + cell.draw_runs:
            modes.setdefault(run.outcome.mode, set()).add(run.outcome.detail)
        if share.learned == 0:
            found.append({"kind": "never learns", "cell": cell_id, "learned": share.as_dict(),
                          "modes": {m: sorted(d)[:3] for m, d in modes.items()}})
        elif share.learned < share.trials:
            found.append({"kind": "lottery", "cell": cell_id, "learned": share.as_dict(),
                          "modes": {m: sorted(d)[:3] for m, d in modes.items()}})
    return found


def _ceilings(cells: dict[str, Cell], multilabel_targets: np.ndarray) -> list[dict]:
    ceiling = multilabel_softmax_ceiling(multilabel_targets)
    found = []
    for cell_id, cell in cells.items():
        if cell.task == "multilabel" and cell.activation == "softmax":
            values = [r.test for r in cell.runs + cell.draw_runs if r.test is not None]
            if values:
                found.append({"kind": "ceiling", "cell": cell_id, "ceiling": ceiling, "best_run": max(values),
                              "why": "softmax sums to 1, so rounding at 0.5 switches on at most one of the 4 labels"})
    return found


def _calibration(cells: dict[str, Cell], calibration: dict[str, dict | None]) -> list[dict]:
    """Outputs outside [0, 1], or an ECE far above the task's reference's."""
    found = []
    for cell_id, summary in calibration.items():
        if not summary:
            continue
        outside = summary.get("outside_unit_share")
        if outside and outside["max"] > 0:
            found.append({"kind": "outputs outside [0, 1]", "cell": cell_id, "share": outside})
        reference = reference_of(S0, cells[cell_id].task, cells)
        ours, theirs = summary.get("ece"), (calibration.get(reference) or {}).get("ece") if reference else None
        if (ours and theirs and cell_id != reference and ours["median"] > ECE_FLOOR
                and ours["median"] > ECE_RATIO * theirs["median"]):
            found.append({"kind": "poorly calibrated", "cell": cell_id, "other": reference,
                          "ece": ours["median"], "other_ece": theirs["median"]})
    return found


def _undecidable(comparisons: list[dict]) -> list[dict]:
    """Comparisons more runs cannot decide: the shared test set's noise is as large as the difference."""
    stuck = [c for c in comparisons if c.get("why_no_runs") and "test set" in c["why_no_runs"]]
    return [{"kind": "test set too small", "comparisons": [[c["cell"], c["other"]] for c in stuck]}] if stuck else []
