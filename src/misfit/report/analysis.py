"""What the report says, as data (reports/results.json): every cell's runs sorted into
outcome modes and summarised within a mode, the comparisons over every draw and their
verdicts, the seeds' claims decided, calibration, the published single runs judged.
Nothing here formats text or draws."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from misfit.core.config import Params
from misfit.core.errors import DataError
from misfit.core.files import (
    json_float,
    read_json,
)
from misfit.core.layout import TEST_LABELS
from misfit.core.study import (
    ADDED,
    PUBLISHED,
    S0,
    S1,
    STUDIES,
    TASK_ORDER,
)
from misfit.report.cells import (
    Cell,
    Run,
    cell_summary,
    relu_lottery,
)
from misfit.report.compare import reference_of
from misfit.report.published import (
    Published,
    judge_published,
    source_offsets,
    task_components,
)

FIGURES = "figures"
REFERENCE_FILE = Path("reference/author_s1.json")  # the author's completed S1 tables, with their source
RELU_CELLS = ("regression-relu-mse-zscore", "regression-relu-mse-raw")
DOUBLE_SOFTMAX_PAIRS = (("binary-softmax-ce", "binary-logits-ce"),
                        ("multiclass-softmax-ce", "multiclass-logits-ce"),
                        ("probability-sigmoid-bce", "probability-logits-bcelogits"),
                        ("multilabel-sigmoid-bce", "multilabel-logits-bcelogits"))
SOURCES = {S0: "seed 000, published", S1: "author, completed S1"}
def published_runs(root: Path) -> dict[str, dict[str, Published]]:
    """{study: {cell: Published}}: seed 000's six (S0) and the author's completed S1 tables."""
    author = read_json(root / REFERENCE_FILE)["cells"]
    s1 = {}
    for cell_id, values in author.items():
        if values == "not run":
            continue
        valid, test = values
        scale, digits = (0.01, 2) if not cell_id.startswith("regression") else (1.0, 4)
        s1[cell_id] = Published(SOURCES[S1], valid * scale, test * scale, digits)
    s0 = {c: Published(SOURCES[S0], v / 100, t / 100, 2) for c, (v, t) in PUBLISHED.items()}
    return {S0: s0, S1: s1}


def family(study: str, task: str, cells: dict[str, Cell]) -> list[Cell]:
    return [cells[c] for c in STUDIES[study] if c.startswith(f"{task}-") and c in cells]


def test_targets(root: Path, task: str) -> np.ndarray:
    """The test split's targets of a task (data/test_labels.npz, the label-derive stage's)."""
    try:
        with np.load(root / TEST_LABELS) as arrays:
            return arrays[task]
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"{root / TEST_LABELS}: cannot read the {task} test targets ({error}); "
                        "rerun label-derive (dvc repro label-derive)") from None


def analyse(cells: dict[str, Cell], published: dict, params: Params, label_summary: dict,
            root: Path = Path(".")) -> dict:
    """Everything the report says, as data: results.json."""
    from misfit.report.calibration import calibration_summary
    from misfit.report.claims import claim_pairs, seed_claims
    from misfit.report.compare import compare_all
    from misfit.report.conclude import claim_findings, own_findings

    comparisons = compare_all(root, cells, claim_pairs(seed_claims()), params.report)
    calibration = {cell_id: calibration_summary(cell) for cell_id, cell in cells.items()}
    results: dict = {"findings": {"claims": claim_findings(cells, comparisons),
                                  "own": own_findings(cells, comparisons, calibration,
                                                      test_targets(root, "multilabel"))},
                     "comparisons": comparisons, "calibration": calibration,
                     "cells": {}, "families": {}, "double_softmax": double_softmax(cells, comparisons)}
    for study in (S0, S1, ADDED):
        for task in TASK_ORDER:
            members = family(study, task, cells)
            if not members:
                continue
            reference = reference_of(study, task, cells)
            results["families"][f"{study}/{task}"] = {"cells": [c.cell_id for c in members], "reference": reference}
    components = {task: {which: task_components([c for c in cells.values() if c.task == task], which)
                         for which in ("test", "valid")} for task in TASK_ORDER}
    for cell_id, cell in cells.items():
        entry = cell_entry(cell)
        entry["published"] = [judge_published(cell, runs[cell_id], label_summary, components[cell.task])
                              for runs in published.values() if cell_id in runs]
        if cell_id in RELU_CELLS:
            entry["relu"] = relu_lottery(cell, label_summary)
        results["cells"][cell_id] = entry
    results["published_offsets"] = {
        source: source_offsets([j for e in results["cells"].values() for j in e["published"] if j["source"] == source])
        for source in SOURCES.values()}
    results["findings"]["own"] += [
        {"kind": "published offset", "source": source, "which": key, **found}
        for source, offsets in results["published_offsets"].items() for key, found in offsets.items()
        if found["p"] < params.report.alpha]
    return results


def cell_entry(cell: Cell) -> dict:
    return {
        "task": cell.task, "metric": cell.metric, "seeds": [r.seed for r in cell.runs],
        "parent_run": cell.record.parent_run_id, "cell_digest": cell.record.cell_digest,
        **cell_summary(cell),
        "all_match_record": all(r.evaluated is None or r.evaluated.matches_record
                                for r in cell.runs + cell.draw_runs),
        "runs": [run_entry(r) for r in cell.runs + cell.draw_runs],
    }


def run_entry(run: Run) -> dict:
    trained = run.trained
    test = run.evaluated.test if run.evaluated is not None and trained.status == "ok" else None
    return {"seed": run.seed, "subset_seed": run.subset_seed, "mode": run.outcome.mode,
            "detail": run.outcome.detail, "run_id": trained.run_id, "config_digest": trained.config_digest,
            "status": trained.status, "error": trained.error, "valid_best": trained.valid_best, "test": test,
            "best_epoch": trained.best_epoch, "epochs_run": trained.epochs_run}


def double_softmax(cells: dict[str, Cell], comparisons: list[dict]) -> list[dict]:
    """The source's idiom (the loss on activated outputs) against the loss on raw logits: the
    all-draw comparison of each pair, and how fast each side learns."""
    from misfit.report.compare import find_comparison

    rows = []
    for source, correct in DOUBLE_SOFTMAX_PAIRS:
        if source not in cells or correct not in cells:
            continue
        a, b = cells[source], cells[correct]
        rows.append({"source": source, "correct": correct,
                     "epoch1_valid": [_median_at_epoch(c, 1) for c in (a, b)],
                     "best_epoch": [_median([r.trained.best_epoch for r in c.runs]) for c in (a, b)],
                     "comparison": find_comparison(comparisons, correct, source)})
    return rows

def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _median_at_epoch(cell: Cell, epoch: int) -> float | None:
    values = [json_float(row.valid_metric) for r in cell.runs for row in r.trained.history if row.epoch == epoch]
    return _median(values)


# -- formatting ----------------------------------------------------------------------

