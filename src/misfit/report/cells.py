"""The cells as the report reads them: each run's outcome mode, each cell's summary (within
a mode only), the constant answers' scores, the ReLU lottery, and the published single runs
judged against a prediction interval for one new run on a new draw (draw and seed crossed,
pooled per task). The comparisons between cells: misfit.report.compare."""
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
    CONSTANT,
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


# -- published single runs --------------------------------------------------------------

@dataclass(frozen=True)
class Published:
    source: str  # "seed 000" or "author (S1, completed)"
    valid: float  # in the metric's units (accuracy as a share)
    test: float
    digits: int  # decimals the source printed, in the units it printed


def run_value(run: Run, which: str) -> float | None:
    """A run's test score, or its valid best."""
    return run.test if which == "test" else run.valid


def _on_scale(value: float, metric: str) -> float:
    return math.log(value) if metric == "mse" else value  # MSE's spread grows with it: compared in logs


def _off_scale(value: float, metric: str) -> float:
    return math.exp(value) if metric == "mse" else value


def task_components(cells: list[Cell], which: str):
    """The draw, seed and residual variance of one run's `which` score, pooled over the task's
    cells whose runs all learned (misfit.report.paired): one cell alone has 4 degrees of
    freedom for its draw part. None when no cell qualifies."""
    import numpy as np

    from misfit.report.paired import Pairs, pooled_components

    groups = []
    for cell in cells:
        runs = [r for r in cell.runs + cell.draw_runs if run_value(r, which) is not None]
        if cell.all_learned and len(runs) > 2:
            groups.append(Pairs(np.array([r.subset_seed for r in runs]), np.array([r.seed for r in runs]),
                                np.array([_on_scale(run_value(r, which), cell.metric) for r in runs]), 0.0))
    return pooled_components(groups) if groups else None


def prediction_for(cell: Cell, which: str, components) -> dict:
    """Where one new run on a new draw with a new seed lands, 95%: the cell's mean over all its
    runs, and the draw, seed and residual variance plus the mean's own."""
    import numpy as np
    from scipy import stats

    runs = [r for r in cell.runs + cell.draw_runs if run_value(r, which) is not None]
    values = [_on_scale(run_value(r, which), cell.metric) for r in runs]
    mean = statistics.fmean(values)
    var_mean = components.variance_of_mean(np.array([r.subset_seed for r in runs]), np.array([r.seed for r in runs]))
    spread = math.sqrt(components.draw + components.seed + components.residual + var_mean)
    half = float(stats.t.ppf(0.975, components.df)) * spread
    low, high = _off_scale(mean - half, cell.metric), _off_scale(mean + half, cell.metric)
    if cell.metric == "accuracy":  # a share: the interval stops where the scale does
        low, high = max(0.0, low), min(1.0, high)
    return {"mean": _off_scale(mean, cell.metric), "low": low, "high": high, "sd_draw": math.sqrt(components.draw),
            "sd_seed": math.sqrt(components.seed), "sd_residual": math.sqrt(components.residual),
            "sd_prediction": spread, "scale": "log" if cell.metric == "mse" else "share", "df": components.df,
            "draws": len({r.subset_seed for r in runs}), "runs": len(runs),
            }


def judge_published(cell: Cell, published: Published, label_summary: dict, components: dict | None = None) -> dict:
    """The published valid and test values, each against one new run of ours on a new draw.

    Every run of the cell on every draw is used. All learned: a prediction interval from
    draw, seed and residual variance pooled over the task (`components`: {"test": ..,
    "valid": ..}). Otherwise: the modes, and which mode (which constant) the published test
    value matches.
    """
    pool = cell.runs + cell.draw_runs
    modes = mode_counts([r.outcome for r in pool])
    tolerance = 0.5 * 10 ** -published.digits * (0.01 if cell.metric == "accuracy" else 1)
    judged = {"cell": cell.cell_id, "source": published.source, "valid": published.valid, "test": published.test,
              "runs": len(pool), "draws": len({r.subset_seed for r in pool}), "modes": modes,
              "values": [[r.subset_seed, r.seed, r.outcome.mode, r.test] for r in pool]}
    if cell.all_learned and components and components.get("test") and components.get("valid"):
        for which in ("test", "valid"):
            interval = prediction_for(cell, which, components[which])
            value = getattr(published, which)
            inside = interval["low"] - tolerance <= value <= interval["high"] + tolerance
            interval["offset"] = _on_scale(value, cell.metric) - _on_scale(interval["mean"], cell.metric)
            judged[f"{which}_interval"] = interval
            judged[f"{which}_inside"] = inside
        judged.update(interval=judged["test_interval"], inside=judged["test_inside"],
                      explanation=None if judged["test_inside"] else _outside_learned(cell, pool, published,
                                                                                     judged["test_interval"]))
        return judged
    judged.update(interval=None, **_judge_by_mode(cell, pool, published, tolerance, label_summary))
    return judged


def source_offsets(judged: list[dict]) -> dict:
    """Whether one source's published numbers sit off ours as a group (each source trained all
    its cells on one draw of its own): the mean of (published - our predicted mean), over
    its cells with an interval, against what independent single runs would scatter (a
    z-test; a shared draw also moves them together, so an offset can be the source's draw)."""
    from scipy import stats

    found = {}
    for which in ("test", "valid"):
        rows = [(j["cell"], j[f"{which}_interval"]) for j in judged if j.get(f"{which}_interval")]
        for metric in ("accuracy", "mse"):
            mine = [(c, i) for c, i in rows if (i["scale"] == "log") == (metric == "mse")]
            if len(mine) < 2:
                continue
            offsets = [i["offset"] for _, i in mine]
            sd = math.sqrt(sum(i["sd_prediction"] ** 2 for _, i in mine)) / len(mine)
            mean = statistics.fmean(offsets)
            p = float(2 * stats.norm.sf(abs(mean) / sd)) if sd > 0 else 1.0
            found[f"{which}/{metric}"] = {"cells": [c for c, _ in mine], "mean_offset": mean, "sd": sd,
                                          "ci": [mean - 1.96 * sd, mean + 1.96 * sd], "p": p,
                                          "scale": "log ratio" if metric == "mse" else "share"}
    return found


def _outside_learned(cell: Cell, pool: list[Run], published: Published, interval: dict) -> str:
    values = [r.test for r in pool]
    beyond = sum(v >= published.test for v in values) if published.test > interval["high"] else sum(
        v <= published.test for v in values)
    side = "above" if published.test > interval["high"] else "below"
    gaps = [r.test - r.valid for r in pool if r.test is not None and r.valid is not None]
    ours_gap = statistics.median(gaps)
    return (f"{side} the interval; {beyond} of our {len(values)} runs reach it. The source's test − valid "
            f"gap is {_signed(published.test - published.valid, cell.metric)} against our median "
            f"{_signed(ours_gap, cell.metric)}: a different split or checkpoint, or a lucky run")


def _signed(value: float, metric: str) -> str:
    return f"{value * 100:+.2f} points" if metric == "accuracy" else f"{value:+.4f}"


def _judge_by_mode(cell: Cell, pool: list[Run], published: Published, tolerance: float,
                   label_summary: dict) -> dict:
    """Which of our modes the published value belongs to, if any."""
    for mode in mode_counts([r.outcome for r in pool]):
        values = [r.test for r in pool if r.outcome.mode == mode and r.test is not None]
        if values and min(values) - tolerance <= published.test <= max(values) + tolerance:
            share = wilson(len([r for r in pool if r.outcome.mode == mode]), len(pool))
            return {"inside": True, "matches_mode": mode,
                    "explanation": f"a `{mode}` run: inside the range of our {len(values)} {mode} runs "
                                   f"({_fmt(min(values), cell.metric)}–{_fmt(max(values), cell.metric)}); "
                                   f"{share.successes}/{share.n} of our runs end that way "
                                   f"(95% CI {share.low:.0%}–{share.high:.0%})"}
    for answer, score in constant_answers(label_summary, cell.task).items():
        if abs(score - published.test) <= tolerance:
            ours = sorted({r.outcome.detail for r in pool if r.outcome.mode == CONSTANT})
            return {"inside": False, "matches_mode": CONSTANT,
                    "explanation": f"the published value is the test share of {answer}: the same constant "
                                   f"mode with another constant answer (ours: {', '.join(ours) or 'none'})"}
    return {"inside": False, "matches_mode": None,
            "explanation": f"no mode of ours comes near it ({format_modes(mode_counts([r.outcome for r in pool]))})"}


def _fmt(value: float, metric: str) -> str:
    return f"{value * 100:.2f}%" if metric == "accuracy" else f"{value:.4f}"


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
