"""The data behind DVC's plots (`dvc plots show`, `dvc plots diff <rev>`): two CSV files
the report stage writes next to the report, drawn by the templates in .dvc/plots/.

Like the report, they never average across outcome modes: a cell whose runs split (a ReLU
that lived in some seeds and died in others) gives one series per mode, named
"<cell> · <mode> k/n", so a plot shows no curve or bar that is no run's.

reports/plots/learning_curves.csv   task, cell, mode, series, epoch, valid_metric (median
                                    over the mode's main-draw runs still training at that
                                    epoch), n_runs
reports/plots/test.csv              task, cell, mode, series, metric, test_median, test_min,
                                    test_max, n: one bar per (cell, mode), the rule its range

Long format, one row per point: the templates facet by task and colour by series, so the
files and dvc.yaml stay the same whichever cells params.yaml holds.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from misfit.core.config import load_params
from misfit.core.files import json_float, read_json, write_text_atomic
from misfit.core.layout import LABEL_SUMMARY, PARAMS_FILE, REPORTS_DIR
from misfit.report.cells import Cell, Run, load_cells

PLOTS_DIR = REPORTS_DIR / "plots"
CURVE_COLUMNS = ("task", "cell", "mode", "series", "epoch", "valid_metric", "n_runs")
TEST_COLUMNS = ("task", "cell", "mode", "series", "metric", "test_median", "test_min", "test_max", "n")


def _csv(columns: tuple[str, ...], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _finite(value) -> float | None:
    number = json_float(value)
    return number if number is not None and math.isfinite(number) else None


def series_name(cell: Cell, mode: str, runs: list[Run]) -> str:
    return f"{cell.cell_id} · {mode} {len(runs)}/{len(cell.runs)}"


def curve_rows(cell: Cell) -> list[dict]:
    """Per mode and epoch, the median valid metric of the mode's runs that reached the epoch."""
    rows = []
    for mode, runs in cell.by_mode.items():
        by_epoch: dict[int, list[float]] = {}
        for run in runs:
            for entry in run.history:
                value = _finite(entry.get("valid_metric"))
                if value is not None:
                    by_epoch.setdefault(int(entry["epoch"]), []).append(value)
        series = series_name(cell, mode, runs)
        rows += [{"task": cell.task, "cell": cell.cell_id, "mode": mode, "series": series, "epoch": epoch,
                  "valid_metric": statistics.median(values), "n_runs": len(values)}
                 for epoch, values in sorted(by_epoch.items())]
    return rows


def bar_rows(cell: Cell) -> list[dict]:
    """Per mode with a test value: its median, its range and how many runs it holds."""
    rows = []
    for mode, runs in cell.by_mode.items():
        values = [r.test for r in runs if r.test is not None]
        if not values:
            continue  # failed or diverged runs: no value to draw; the report names their error
        rows.append({"task": cell.task, "cell": cell.cell_id, "mode": mode, "series": series_name(cell, mode, runs),
                     "metric": cell.metric, "test_median": statistics.median(values), "test_min": min(values),
                     "test_max": max(values), "n": len(values)})
    return rows


def write_plot_data(root: Path = Path(".")) -> None:
    params = load_params(root / PARAMS_FILE)
    cells = load_cells(root, params, read_json(root / LABEL_SUMMARY))
    curves = [row for cell in cells.values() for row in curve_rows(cell)]
    bars = [row for cell in cells.values() for row in bar_rows(cell)]
    write_text_atomic(root / PLOTS_DIR / "learning_curves.csv", _csv(CURVE_COLUMNS, curves))
    write_text_atomic(root / PLOTS_DIR / "test.csv", _csv(TEST_COLUMNS, bars))
    print(f"wrote {PLOTS_DIR}/learning_curves.csv ({len(curves)} points) and {PLOTS_DIR}/test.csv "
          f"({len(bars)} bars, one per cell and outcome mode)")
