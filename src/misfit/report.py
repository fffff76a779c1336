"""The report stage: reports/results.json and reports/report.md from metrics/ alone.

Every number in the report is read from the evaluate stage's metrics files (and, for
the per-epoch figures, from the train stage's records); none is typed by hand.
"""
from __future__ import annotations

from pathlib import Path

from misfit.config import Params, load_params
from misfit.files import json_float, read_json, write_json_atomic, write_text_atomic
from misfit.layout import METRICS_DIR, PARAMS_FILE, REPORTS_DIR
from misfit.study import PUBLISHED, STUDIES, STUDY_TITLES, TASK_ORDER, recommended_in


def collect_results(root: Path, params: Params) -> dict:
    """results.json: one entry per cell of params.yaml, from its metrics file."""
    cells = {}
    for cell_id in params.cells:
        path = root / METRICS_DIR / f"{cell_id}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run evaluate@{cell_id} first (dvc repro)")
        metrics = read_json(path)
        seeds = metrics["seeds"]
        cells[cell_id] = {
            "task": metrics["task"], "metric": metrics["metric"], "status": metrics["status"],
            "error": metrics.get("error"), "seeds": [int(s) for s in seeds],
            **{key: _stat(metrics[key]) for key in ("valid_best", "test", "best_epoch")},
            "runs": [entry["run_id"] for entry in seeds.values()],
            "parent_run": metrics["parent_run_id"], "cell_digest": metrics["cell_digest"],
            "per_seed": seeds, "all_match_record": metrics["all_match_record"],
        }
    return {"cells": cells}


def _stat(summary: dict) -> dict:
    """A metrics-file summary with its absent fields as null, as results.json has them."""
    return {"mean": summary.get("mean"), "std": summary.get("std"), "n": summary["n"]}


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def format_stat(stat: dict, metric: str) -> str:
    """mean ± std (n), accuracy in percent."""
    if not stat["n"]:
        return "–"
    scale = _scale(metric)
    mean = json_float(stat["mean"]) * scale
    digits = 2 if metric == "accuracy" else 4
    spread = f" ± {json_float(stat['std']) * scale:.{digits}f}" if stat["std"] is not None else ""
    return f"{mean:.{digits}f}{spread} ({stat['n']})"


def format_epochs(stat: dict) -> str:
    if not stat["n"]:
        return "–"
    spread = f" ± {stat['std']:.1f}" if stat["std"] is not None else ""
    return f"{stat['mean']:.1f}{spread}"


def _run_links(entry: dict, ui_base_url: str | None, experiment_id: str | None) -> str:
    ids = entry["runs"]
    if ui_base_url and experiment_id:
        base = ui_base_url.rstrip("/")
        return " ".join(f"[{rid[:8]}]({base}/#/experiments/{experiment_id}/runs/{rid})" for rid in ids)
    return " ".join(f"`{rid[:8]}`" for rid in ids)


def _published(cell_id: str, entry: dict) -> str:
    if cell_id not in PUBLISHED:
        return ""
    valid, test = PUBLISHED[cell_id]
    text = f"{valid:.2f} / {test:.2f}"
    if entry["test"]["n"]:
        ours = json_float(entry["test"]["mean"]) * 100
        text += f" (Δ test {ours - test:+.2f})"
    return text


def table_rows(study: str, task: str, results: dict, ui_base_url, experiment_id) -> list[str]:
    cells = [c for c in STUDIES[study] if c.startswith(f"{task}-") and c in results["cells"]]
    if not cells:
        return []
    metric = results["cells"][cells[0]]["metric"]
    unit = "accuracy %" if metric == "accuracy" else "MSE"
    rows = [
        f"| cell | seed's mark | valid best ({unit}) | test ({unit}) | best epoch | "
        "seed 000 published (valid / test) | runs | config digest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell_id in cells:
        entry = results["cells"][cell_id]
        mark = "✅" if recommended_in(cell_id, study) else "❌"
        if entry["status"] == "failed" and not entry["test"]["n"]:
            valid = test = f"**failed**: {entry['error']}"
            epochs = "–"
        else:
            valid, test = format_stat(entry["valid_best"], metric), format_stat(entry["test"], metric)
            epochs = format_epochs(entry["best_epoch"])
            if entry["status"] == "failed":
                test += f" ⚠ {entry['error']}"
        rows.append(
            f"| `{cell_id}` | {mark} | {valid} | {test} | {epochs} | {_published(cell_id, entry)} | "
            f"{_run_links(entry, ui_base_url, experiment_id)} | `{entry['cell_digest'][:12]}` |"
        )
    return rows


def render_report(results: dict, params: Params, experiment_id: str | None) -> str:
    lines = [
        "# Loss functions and final activations that do not fit the task",
        "",
        f"CNN of STUDY.md on MNIST ({params.data.n_train} train / {params.data.n_valid} valid / "
        f"{params.data.n_test} test images), seeds {params.seeds}, AdamW lr {params.protocol.lr}, "
        f"batch {params.protocol.batch_size}, early stopping patience {params.protocol.patience}. "
        "Values are mean ± sample std over seeds (n = seeds that finished). Accuracy in percent; "
        "MSE in the target's original units (strokes²).",
        "",
        "Generated by `dvc repro` (stage `report`) from `metrics/*.json`; nothing here is typed by hand.",
    ]
    for study in STUDIES:
        lines += ["", f"## {STUDY_TITLES[study]}"]
        for task in TASK_ORDER:
            rows = table_rows(study, task, results, params.tracking.ui_base_url, experiment_id)
            if rows:
                lines += ["", f"### {task}", "", *rows]
    return "\n".join(lines) + "\n"


def experiment_id_of(root: Path, params: Params) -> str | None:
    if not params.tracking.ui_base_url:
        return None
    from misfit.tracking import open_experiment

    return open_experiment(root, params.tracking.experiment)[1]


def write_report(root: Path = Path(".")) -> None:
    params = load_params(root / PARAMS_FILE)
    results = collect_results(root, params)
    report = render_report(results, params, experiment_id_of(root, params))
    write_json_atomic(root / REPORTS_DIR / "results.json", results)
    write_text_atomic(root / REPORTS_DIR / "report.md", report)
    print(f"wrote {REPORTS_DIR / 'report.md'} and {REPORTS_DIR / 'results.json'} ({len(results['cells'])} cells)")
