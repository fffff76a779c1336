"""The data behind DVC's plots (`dvc plots show`, `dvc plots diff <rev>`): two CSV files
the report stage writes next to the report, drawn by the templates in .dvc/plots/.

reports/plots/learning_curves.csv   task, cell, epoch, valid_metric (mean over the main
                                    draw's seeds still training at that epoch), n_seeds
reports/plots/test.csv              task, cell, metric, test_mean, test_sd, test_lo,
                                    test_hi (mean ± sd), n: one bar per cell

Long format, one row per point: the templates facet by task and colour by cell, so the
files and dvc.yaml stay the same whichever cells params.yaml holds.
"""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from misfit.config import load_params
from misfit.files import json_float, read_json, write_text_atomic
from misfit.layout import METRICS_DIR, PARAMS_FILE, RECORDS_DIR, REPORTS_DIR

PLOTS_DIR = REPORTS_DIR / "plots"
CURVE_COLUMNS = ("task", "cell", "epoch", "valid_metric", "n_seeds")
TEST_COLUMNS = ("task", "cell", "metric", "test_mean", "test_sd", "test_lo", "test_hi", "n")


def _csv(columns: tuple[str, ...], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _finite(value) -> float | None:
    number = json_float(value)
    return number if number is not None and number == number and abs(number) != float("inf") else None


def curve_rows(cell: str, record: dict) -> list[dict]:
    """Per epoch, the valid metric averaged over the main draw's runs that reached it."""
    main = (record["data"].get("config") or {}).get("subset_seed")
    by_epoch: dict[int, list[float]] = {}
    for run in record["runs"]:
        if run.get("subset_seed", main) != main:
            continue
        for entry in run.get("history") or []:
            value = _finite(entry.get("valid_metric"))
            if value is not None:
                by_epoch.setdefault(int(entry["epoch"]), []).append(value)
    return [{"task": record["task"], "cell": cell, "epoch": epoch, "valid_metric": statistics.fmean(values),
             "n_seeds": len(values)} for epoch, values in sorted(by_epoch.items())]


def test_row(cell: str, task: str, metric: str, metrics: dict) -> dict | None:
    test = metrics.get("test") or {}
    mean, sd = _finite(test.get("mean")), _finite(test.get("sd", test.get("std")))
    if mean is None:
        return None  # every seed failed: no bar
    spread = sd or 0.0
    return {"task": task, "cell": cell, "metric": metric, "test_mean": mean, "test_sd": sd,
            "test_lo": mean - spread, "test_hi": mean + spread, "n": test.get("n")}


def write_plot_data(root: Path = Path(".")) -> None:
    params = load_params(root / PARAMS_FILE)
    curves, bars = [], []
    for cell in params.cells:
        record_file = root / RECORDS_DIR / f"{cell}.json"
        metrics_file = root / METRICS_DIR / f"{cell}.json"
        for path in (record_file, metrics_file):
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing; run train@{cell} first (dvc repro)")
        record = read_json(record_file)
        curves += curve_rows(cell, record)
        row = test_row(cell, record["task"], record["metric"], read_json(metrics_file))
        if row is not None:
            bars.append(row)
    write_text_atomic(root / PLOTS_DIR / "learning_curves.csv", _csv(CURVE_COLUMNS, curves))
    write_text_atomic(root / PLOTS_DIR / "test.csv", _csv(TEST_COLUMNS, bars))
    print(f"wrote {PLOTS_DIR}/learning_curves.csv ({len(curves)} points) and {PLOTS_DIR}/test.csv "
          f"({len(bars)} cells)")
