"""The cells as the report reads them: each run's outcome mode, each cell's summary (within
a mode only), the constant answers' scores and the ReLU lottery. The comparisons between
cells: misfit.report.compare; the published single runs: misfit.report.published."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from misfit.core.config import Params
from misfit.core.layout import EVALUATIONS_DIR, RECORDS_DIR
from misfit.core.record import (
    EvaluatedRun,
    EvaluationRecord,
    TrainedRun,
    TrainRecord,
)
from misfit.core.tasks import STROKES
from misfit.joined import load_cell_records
from misfit.report.intervals import (
    wilson,
)
from misfit.report.modes import (
    DEAD_RELU,
    LEARNED,
    Outcome,
    TaskContext,
    classify,
    mode_counts,
)

ALPHA = 0.05


@dataclass(frozen=True)
class Baseline:
    value: float  # what the best constant answer scores on the test set
    text: str  # what that answer is, in words


def baselines(label_summary: dict) -> dict[str, Baseline]:
    """The best constant answer's test score per task, from data/label_summary.json.

    Regression: always predicting the train mean (what a model that learned nothing but
    the mean does), so its MSE is the test variance plus the squared shift of the means.
    """
    test, train = label_summary["test"], label_summary["train"]
    n = test["n"]
    positive = test["probability"]["positive_share"]
    shift = test["regression"]["mean"] - train["regression"]["mean"]
    per_output = [max(p, 1 - p) for p in test["multilabel"]["positive_share_per_output"]]
    return {
        "regression": Baseline(test["regression"]["variance"] + shift ** 2,
                               "always predicting the train mean"),
        "probability": Baseline(max(positive, 1 - positive), "always answering the majority answer"),
        "binary": Baseline(max(test["binary"]["class_counts"]) / n, "always answering the majority class"),
        "multiclass": Baseline(max(test["multiclass"]["class_counts"]) / n,
                               "always answering the most frequent digit"),
        "multilabel": Baseline(sum(per_output) / len(per_output),
                               "a constant answer per label, its majority"),
    }


def relu_clip_bound(label_summary: dict) -> float:
    """The lowest test MSE a z-scored ReLU regressor can reach: its output cannot go below
    z = 0, i.e. below the train mean, so at best it predicts the mean for every target under
    the mean and every other target exactly."""
    mean = label_summary["train"]["regression"]["mean"]
    counts = label_summary["test"]["multiclass"]["class_counts"]
    below = sum(n * (STROKES[d] - mean) ** 2 for d, n in enumerate(counts) if STROKES[d] < mean)
    return below / sum(counts)


def zero_mse(label_summary: dict) -> float:
    """Test MSE of always predicting 0: what a dead raw-target ReLU scores."""
    counts = label_summary["test"]["multiclass"]["class_counts"]
    return sum(n * STROKES[d] ** 2 for d, n in enumerate(counts)) / sum(counts)


def constant_answers(label_summary: dict, task: str) -> dict[str, float]:
    """Test score of each constant answer of a classification task: {answer: accuracy}."""
    test = label_summary["test"]
    n = test["n"]
    if task == "multiclass":
        return {f"digit {d}": c / n for d, c in enumerate(test["multiclass"]["class_counts"])}
    if task in ("binary", "probability"):
        positive = test["probability"]["positive_share"]
        return {"always 1 (curved)": positive, "always 0 (not curved)": 1 - positive}
    return {}


# -- runs and cells ---------------------------------------------------------------------

@dataclass
class Run:
    """One (draw, seed) run: as trained (records/<cell>.json), as re-scored (evaluations/<cell>.json;
    None for a run that kept no checkpoint), and its outcome mode."""
    trained: TrainedRun
    evaluated: EvaluatedRun | None
    outcome: Outcome

    @property
    def seed(self) -> int:
        return self.trained.seed

    @property
    def subset_seed(self) -> int:
        return self.trained.subset_seed

    @property
    def run_id(self) -> str:
        return self.trained.run_id

    @property
    def test(self) -> float | None:
        """The re-scored test value; None for a failed run or a non-finite score."""
        if self.evaluated is None or self.trained.status != "ok":
            return None
        return self.evaluated.test if math.isfinite(self.evaluated.test) else None

    @property
    def valid(self) -> float | None:
        """The valid best, re-scored where the checkpoint was (training's own otherwise)."""
        value = self.evaluated.valid if self.evaluated is not None else self.trained.valid_best
        return value if value is not None and math.isfinite(value) else None

    @property
    def history(self) -> list[dict]:
        """Each epoch as a row (the figures and diagnostics read rows by key)."""
        return [epoch.model_dump() for epoch in self.trained.history]


@dataclass
class Cell:
    cell_id: str
    task: str
    metric: str
    activation: str
    record: TrainRecord
    runs: list[Run]  # the main draw's
    draw_runs: list[Run]  # every run on a further draw
    comparisons: dict = field(default_factory=dict)  # study -> comparison dict

    @property
    def modes(self) -> dict[str, int]:
        return mode_counts([r.outcome for r in self.runs])

    @property
    def by_mode(self) -> dict[str, list[Run]]:
        """The main draw's runs grouped by outcome mode, in modes.MODES order."""
        return {mode: [r for r in self.runs if r.outcome.mode == mode] for mode in self.modes}

    @property
    def single_mode(self) -> str | None:
        modes = self.modes
        return next(iter(modes)) if len(modes) == 1 else None

    def values(self, mode: str | None = None) -> list[float]:
        return [r.test for r in self.runs if r.test is not None and (mode is None or r.outcome.mode == mode)]

    @property
    def all_learned(self) -> bool:
        """Every run, on every draw, learned and has a test score."""
        runs = self.runs + self.draw_runs
        return bool(runs) and all(r.outcome.mode == LEARNED and r.test is not None for r in runs)

    @property
    def learns(self) -> bool:
        return self.single_mode == LEARNED and len(self.values()) >= 2


def task_context(task: str, activation: str, label_summary: dict) -> TaskContext:
    return TaskContext(task, activation, label_summary["train"]["regression"]["mean"],
                       baselines(label_summary)[task].value)


def load_cell(cell_id: str, record: TrainRecord, evaluation: EvaluationRecord | None, main_subset_seed: int,
              label_summary: dict) -> Cell:
    context = task_context(record.task, record.cell["activation"], label_summary)
    runs = []
    for trained in record.runs:
        evaluated = evaluation.run(trained.subset_seed, trained.seed) if evaluation else None
        test = evaluated.test if evaluated is not None and trained.status == "ok" else None
        runs.append(Run(trained, evaluated, classify(trained, test, context)))
    return Cell(cell_id, record.task, record.metric, record.cell["activation"], record,
                [r for r in runs if r.subset_seed == main_subset_seed],
                [r for r in runs if r.subset_seed != main_subset_seed])


def load_cells(root: Path, params: Params, label_summary: dict) -> dict[str, Cell]:
    """Every cell of params.yaml from records/<cell>.json and evaluations/<cell>.json, each
    validated against its model (misfit.core.record), its runs sorted into modes."""
    cells = {}
    for cell_id in params.cells:
        path = root / RECORDS_DIR / f"{cell_id}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run train@{cell_id} first (dvc repro)")
        record, evaluation = load_cell_records(root / RECORDS_DIR, root / EVALUATIONS_DIR, cell_id)
        cells[cell_id] = load_cell(cell_id, record, evaluation, params.data.subset_seed, label_summary)
    return cells


def mode_summary(values: list[float]) -> dict:
    summary = {"n": len(values)}
    if values:
        summary.update(median=statistics.median(values), min=min(values), max=max(values))
    return summary


def cell_summary(cell: Cell) -> dict:
    """Per mode: n, median, range; mean, sd and a t interval of the mean only when every
    run of the main draw is in the one mode."""
    per_mode = {mode: mode_summary(cell.values(mode)) for mode in cell.modes}
    summary: dict = {"modes": cell.modes, "n": len(cell.runs), "per_mode": per_mode}
    values = cell.values()
    if cell.single_mode and len(values) == len(cell.runs) and values:
        summary["mean"] = statistics.fmean(values)
        if len(values) > 1:
            from scipy import stats

            sd = statistics.stdev(values)
            half = float(stats.t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
            summary.update(sd=sd, ci=[summary["mean"] - half, summary["mean"] + half])
    return summary


# -- comparisons ------------------------------------------------------------------------

def format_modes(modes: dict[str, int]) -> str:
    total = sum(modes.values())
    return ", ".join(f"{n}/{total} {mode}" for mode, n in modes.items())


# -- the ReLU lottery -------------------------------------------------------------------

def relu_lottery(cell: Cell, label_summary: dict) -> dict:
    """Survival (runs not dead) with a Wilson interval, how the dead died, and the survivors'
    MSE next to what a clipped output can reach at best (z-scored) or what 0 scores (raw)."""
    dead = [r for r in cell.runs if r.outcome.mode == DEAD_RELU]
    alive = [r for r in cell.runs if r.outcome.mode != DEAD_RELU]
    rate = wilson(len(alive), len(cell.runs))
    found = {
        "survival": {"alive": len(alive), "n": len(cell.runs), "ci": [rate.low, rate.high]},
        "dead_at_init": sum(r.outcome.detail == "dead at initialisation" for r in dead),
        "died_in_training": sum(r.outcome.detail.startswith("died") for r in dead),
        "alive_modes": mode_counts([r.outcome for r in alive]),
        "alive_test": mode_summary([r.test for r in alive if r.test is not None]),
        "dead_test": mode_summary([r.test for r in dead if r.test is not None]),
        "survivors": [r.seed for r in alive],
        "dead_at_init_seeds": [r.seed for r in dead if r.outcome.detail == "dead at initialisation"],
    }
    if cell.record.cell["variant"] == "zscore":
        found["clip_bound"] = relu_clip_bound(label_summary)
    else:
        found["zero_mse"] = zero_mse(label_summary)
    return found
