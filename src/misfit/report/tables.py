"""The per-study tables and the text under each: formatting of results and cells only."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from misfit.core.config import Params
from misfit.core.study import (
    STUDIES,
    recommended_in,
)
from misfit.report.analysis import (
    SOURCES,
)
from misfit.report.cells import (
    Cell,
)
from misfit.report.modes import (
    CONSTANT,
    DEAD_RELU,
    DIVERGED,
    FAILED,
)

SHOWN_DETAILS = 4  # per mode in a table cell; every run's detail is in results.json
DECIMAL = re.compile(r"-?\d+\.\d+")
def fmt(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None:
        return "–"
    sign = "+" if signed else ""
    return f"{value * 100:{sign}.2f}" if metric == "accuracy" else f"{value:{sign}.4f}"


def modes_text(cell: Cell) -> str:
    details = {}
    for run in cell.runs:
        details.setdefault(run.outcome.mode, []).append(run.outcome.detail)
    parts = []
    for mode, n in cell.modes.items():
        kinds = [] if mode in (FAILED, DIVERGED) else _detail_groups(details[mode])  # errors go under the table
        shown = f" ({'; '.join(kinds[:SHOWN_DETAILS])}{'; …' if len(kinds) > SHOWN_DETAILS else ''})" if kinds else ""
        parts.append(f"{n}/{len(cell.runs)} {mode}{shown}")
    return "; ".join(parts)


def _detail_groups(details: list[str]) -> list[str]:
    """Details that differ only in a measured number (a constant of -1.35 or -0.99 strokes)
    as one group with the numbers' range; whole numbers (a digit, an epoch) stay apart.
    A detail is split around its decimals, not used as a format string: it may hold braces
    (a multilabel answer, "labels {curved}")."""
    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for detail in details:
        if detail:
            groups.setdefault(tuple(DECIMAL.split(detail)), []).append(DECIMAL.findall(detail))
    texts = []
    for words, numbers in sorted(groups.items(), key=lambda item: -len(item[1])):
        slots = [sorted(set(column), key=float) for column in zip(*numbers)]
        ranges = [s[0] if len(s) == 1 else f"{s[0]} to {s[-1]}" for s in slots]
        text = "".join(word + number for word, number in zip(words, [*ranges, ""]))
        texts.append(text if len(numbers) == len(details) else f"{len(numbers)}× {text}")
    return texts


def value_text(cell: Cell, summary: dict) -> str:
    """mean ± sd [95% CI] when every run is in one mode; otherwise per mode: median (range)."""
    metric = cell.metric
    if not cell.values():
        return "**failed**: no run has a result"
    if "mean" in summary:
        if "sd" not in summary:
            return fmt(summary["mean"], metric)
        if summary["sd"] == 0:  # no spread, so no interval: every run scored the same
            return f"{fmt(summary['mean'], metric)} (all {len(cell.values())} runs)"
        low, high = summary["ci"]
        return f"{fmt(summary['mean'], metric)} ± {fmt(summary['sd'], metric)} [{fmt(low, metric)}, {fmt(high, metric)}]"
    parts = []
    for mode, stats in summary["per_mode"].items():
        if not stats["n"]:
            continue
        low, high = fmt(stats["min"], metric), fmt(stats["max"], metric)
        spread = "" if stats["n"] == 1 else f" (all {stats['n']})" if low == high else f" ({low}–{high})"
        parts.append(f"{mode}: {fmt(stats['median'], metric)}{spread}")
    return "; ".join(parts)


def epochs_text(cell: Cell) -> str:
    """Median best epoch, per mode where the runs split; "never improved" for constant or
    dead runs kept at epoch 1 (a best epoch of 1 would read like fast convergence)."""
    stuck = [r for r in cell.runs if r.outcome.mode in (CONSTANT, DEAD_RELU) and r.trained.best_epoch == 1]
    parts = []
    for mode, runs in cell.by_mode.items():
        epochs = [r.trained.best_epoch for r in runs if r not in stuck and r.trained.best_epoch]
        if epochs:
            prefix = f"{mode}: " if len(cell.modes) > 1 else ""
            parts.append(f"{prefix}{statistics.median(epochs):g} ({min(epochs)}–{max(epochs)})")
    if stuck:
        parts.append(f"{len(stuck)}/{len(cell.runs)} never improved after epoch 1")
    return "; ".join(parts) or "–"


def published_text(cell_id: str, study: str, published: dict, judged: list[dict]) -> str:
    """The source's valid / test numbers, marked by whether the test one falls inside our
    95% prediction interval for one new run (or a mode's range): the intervals in runs.md."""
    found = published[study].get(cell_id)
    if found is None:
        return ""
    metric = "mse" if cell_id.startswith("regression") else "accuracy"
    verdict = next((j["inside"] for j in judged if j["source"] == SOURCES[study]), None)
    mark = "" if verdict is None else " (inside)" if verdict else " (**outside**)"
    return f"{fmt(found.valid, metric)} / {fmt(found.test, metric)}{mark}"


def run_ids(cell: Cell, links: tuple[str | None, str | None]) -> str:
    """The main draw's run ids; links into the MLflow UI when tracking.ui_base_url is set."""
    base, experiment_id = links
    ids = [r.run_id for r in cell.runs]
    if base and experiment_id:
        return " ".join(f"[{i[:8]}]({base.rstrip('/')}/#/experiments/{experiment_id}/runs/{i})" for i in ids)
    return " ".join(f"`{i[:8]}`" for i in ids)


def experiment_id_of(root: Path, params: Params) -> str | None:
    if not params.tracking.ui_base_url:
        return None
    from misfit.track.store import open_experiment

    return open_experiment(root, params.tracking.experiment)[1]


# -- sections ------------------------------------------------------------------------

def study_table(study: str, task: str, members: list[Cell], results: dict, published: dict) -> list[str]:
    """One row per cell: its outcomes and numbers on the main draw, its comparison with the
    table's ✅ reference over every draw, and the source's published numbers, each marked
    inside or outside what our runs predict for one new run."""
    from misfit.report.compare import find_comparison
    from misfit.report.render_findings import effect_text

    metric = members[0].metric
    unit = "accuracy %" if metric == "accuracy" else "MSE, strokes²; lower is better"
    reference = results["families"][f"{study}/{task}"]["reference"]
    against = f" against `{reference}`, every draw |" if reference else ""
    source = f" {SOURCES[study]} (valid / test) |" if study in SOURCES else ""
    rows = [f"| cell | seed's mark | outcomes (main draw) | test ({unit}) | valid best | best epoch |{against}{source}",
            "|---|---|---|---|---|---|" + ("---|" if against else "") + ("---|" if source else "")]
    for cell in members:
        entry = results["cells"][cell.cell_id]
        valid = cell_summary_valid(cell)
        mark = ("✅" if recommended_in(cell.cell_id, study) else "❌") if cell.cell_id in STUDIES[study] else \
            "– (not in the write-up; the author ran it later)"
        if against:
            comparison = find_comparison(results["comparisons"], cell.cell_id, reference)
            shown = ("the reference" if cell.cell_id == reference else
                     effect_text(comparison, cell.cell_id) if comparison else "–")
            compared = f" {shown} |"
        else:
            compared = ""
        pub = f" {published_text(cell.cell_id, study, published, entry['published'])} |" if source else ""
        rows.append(f"| `{cell.cell_id}` | {mark} | {modes_text(cell)} | {value_text(cell, entry)} | {valid} | "
                    f"{epochs_text(cell)} |{compared}{pub}")
    return rows


def cell_summary_valid(cell: Cell) -> str:
    """The median best valid value, per mode where the runs split."""
    return per_mode_median(cell, lambda run: run.valid, single_suffix=" (median)")


def per_mode_median(cell: Cell, value_of, single_suffix: str = "") -> str:
    """The median of `value_of(run)` over the runs with a result, per mode where the runs split
    (a median across modes can fall between them, on no run's value)."""
    parts = []
    for mode, runs in cell.by_mode.items():
        values = [value_of(r) for r in runs if r.test is not None]
        if values:
            median = fmt(statistics.median(values), cell.metric)
            parts.append(f"{median}{single_suffix}" if len(cell.modes) == 1 else f"{mode}: {median}")
    return "; ".join(parts) or "–"


def family_finding(study: str, task: str, results: dict, members: list[Cell], baseline) -> list[str]:
    """Under a table of `members`: what its comparison column is, then failures and constant answers."""
    info = results["families"][f"{study}/{task}"]
    lines = []
    reference = info["reference"]
    metric = members[0].metric
    if reference:
        lines.append(f"The column *against `{reference}`*: each cell compared with it over every draw, paired by "
                     "draw and seed; the interval is simultaneous over the task's comparisons and includes the test "
                     "set's noise.")
    else:
        lines.append("No ✅ cell of this table has every run learned, so nothing is compared with it.")
    for cell in members:
        errors = sorted({r.outcome.detail for r in cell.runs if r.outcome.mode in (FAILED, DIVERGED)})
        for error in errors:
            which = [str(r.seed) for r in cell.runs if r.outcome.detail == error]
            lines.append(f"- `{cell.cell_id}` seed(s) {', '.join(which)}: {error}.")
    lines += constant_answer_lines(members, baseline)
    name = "The train-mean baseline" if metric == "mse" else "The best constant answer"
    lines.append(f"- {name} ({baseline.text}) scores {fmt(baseline.value, metric)} on test.")
    return lines


def constant_answer_lines(cells: list[Cell], baseline) -> list[str]:
    """The classifiers' constant runs, one line per answer over the table's cells: what that
    answer scores next to the best constant answer (a collapse to the minority answer scores
    below it)."""
    by_answer: dict[str, list[tuple[Cell, list[float]]]] = {}
    for cell in cells:
        if cell.metric != "accuracy":
            continue
        runs = [r for r in cell.runs if r.outcome.mode == CONSTANT and r.test is not None]
        for answer in sorted({r.outcome.detail for r in runs}):
            by_answer.setdefault(answer, []).append((cell, [r.test for r in runs if r.outcome.detail == answer]))
    lines = []
    for answer, found in by_answer.items():
        scores = [score for _, cell_scores in found for score in cell_scores]
        low, high = fmt(min(scores), "accuracy"), fmt(max(scores), "accuracy")
        shown = f"{low}%" if low == high else f"{low}–{high}%"
        gap = baseline.value - max(scores)
        versus = ("as much as the best constant answer" if gap <= 1e-9 else
                  f"{fmt(gap, 'accuracy')} points less than the best constant answer: not the majority answer")
        who = ", ".join(f"`{cell.cell_id}` ({len(cell_scores)}/{len(cell.runs)} runs)" for cell, cell_scores in found)
        lines.append(f"- {who} answer{'s' if len(found) == 1 else ''} {answer} for (nearly) every image, which "
                     f"scores {shown} on test, {versus}.")
    return lines


def _p_relation(value: float) -> str:
    """The relation that follows "p_adj": '= 0.031' or '< 0.001'."""
    text = _p(value)
    return text if text.startswith("<") else f"= {text}"


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


