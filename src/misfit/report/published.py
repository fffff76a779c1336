"""The published single runs, judged: each source's valid and test number against a 95%
prediction interval for one new run on a new draw with a new seed (draw and seed crossed,
pooled per task), or, where a cell's runs split into modes, against the mode whose range it
falls in; and whether a source's numbers sit off ours as a group."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from misfit.report.cells import Cell, Run, constant_answers, format_modes
from misfit.report.intervals import wilson
from misfit.report.modes import CONSTANT, mode_counts


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
