"""The report stage: reports/results.json, reports/report.md and reports/figures/.

Every number is read from the evaluate stage's metrics files, the train stage's
records (per-epoch histories) and the label summary (what a constant prediction
scores); none is typed by hand. Sentences under the tables are computed from the
numbers (misfit.findings, misfit.diagnostics).
"""
from __future__ import annotations

from pathlib import Path

from misfit import diagnostics, figures
from misfit.config import Params, load_params
from misfit.files import atomic_dir, json_float, read_json, write_json_atomic, write_text_atomic
from misfit.findings import ALPHA, Baseline, baselines, compare, format_metric, format_p, task_finding
from misfit.layout import LABELS_DIR, METRICS_DIR, PARAMS_FILE, RECORDS_DIR, REPORTS_DIR
from misfit.study import ADDED, PUBLISHED, RECOMMENDED, STUDIES, STUDY_TITLES, TASK_ORDER, recommended_in

FIGURES = "figures"
DOUBLE_SOFTMAX_PAIRS = (("binary-softmax-ce", "binary-logits-ce"),
                        ("multiclass-softmax-ce", "multiclass-logits-ce"),
                        ("probability-sigmoid-bce", "probability-logits-bcelogits"),
                        ("multilabel-sigmoid-bce", "multilabel-logits-bcelogits"))


# -- data ----------------------------------------------------------------------------

def read_record(root: Path, cell_id: str) -> dict:
    path = root / RECORDS_DIR / f"{cell_id}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run train@{cell_id} first (dvc repro)")
    return read_json(path)


def collect_results(root: Path, params: Params) -> dict:
    """results.json: one entry per cell of params.yaml, from its record and metrics file."""
    cells = {}
    for cell_id in params.cells:
        record = read_record(root, cell_id)
        metrics = read_json(root / METRICS_DIR / f"{cell_id}.json")
        main = [r for r in record["runs"] if r["subset_seed"] == params.data.subset_seed]
        failed = [r for r in main if r["status"] != "ok"]
        cells[cell_id] = {
            "task": record["task"], "metric": record["metric"], "status": "failed" if failed else "ok",
            "error": "; ".join(f"seed {r['seed']}: {r['error']}" for r in failed) or None,
            "seeds": [r["seed"] for r in main],
            **{key: _stat(metrics[key]) for key in ("valid_best", "test", "best_epoch")},
            "runs": [r["run_id"] for r in main],
            "parent_run": record["parent_run_id"], "cell_digest": record["cell_digest"],
            "per_seed": {str(r["seed"]): {k: r[k] for k in ("run_id", "config_digest", "status", "error",
                                                            "best_epoch", "valid_best", "test")}
                         for r in main},
            "all_match_record": metrics["mismatches"] == 0,
        }
    return {"cells": cells}


def _stat(summary: dict) -> dict:
    """A metrics-file summary with its absent fields as null, as results.json has them."""
    return {"mean": summary.get("mean"), "std": summary.get("sd"), "n": summary["n"]}


def load_histories(root: Path, cells) -> dict[str, dict]:
    """Per cell: the main draw's per-epoch histories and best epochs, from records/<cell>.json."""
    loaded = {}
    for cell_id in cells:
        record = read_record(root, cell_id)
        main = [r for r in record["runs"] if r["subset_seed"] == record["data"]["config"]["subset_seed"]]
        loaded[cell_id] = {"histories": [run["history"] for run in main],
                           "best_epochs": [run["best_epoch"] for run in main]}
    return loaded


# -- tables --------------------------------------------------------------------------

def format_stat(stat: dict, metric: str) -> str:
    """mean ± std (n), accuracy in percent."""
    if not stat["n"]:
        return "–"
    scale = 100.0 if metric == "accuracy" else 1.0
    digits = 2 if metric == "accuracy" else 4
    mean = json_float(stat["mean"]) * scale
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


def _published(cell_id: str) -> str:
    if cell_id not in PUBLISHED:
        return ""
    valid, test = PUBLISHED[cell_id]
    return f"{valid:.2f} / {test:.2f}"


def table_rows(study: str, cells: list[str], results: dict, ui_base_url, experiment_id) -> list[str]:
    metric = results["cells"][cells[0]]["metric"]
    unit = "accuracy %" if metric == "accuracy" else "MSE, lower is better"
    rows = [
        f"| cell | seed's mark | valid best ({unit}) | test ({unit}) | best epoch | "
        "seed 000 published (valid / test) | MLflow runs | config digest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell_id in cells:
        entry = results["cells"][cell_id]
        mark = "✅" if recommended_in(cell_id, study) else "❌"
        if not entry["test"]["n"]:
            valid, test, epochs = "**failed**", f"**failed**: {entry['error']}", "–"
        else:
            valid, test = format_stat(entry["valid_best"], metric), format_stat(entry["test"], metric)
            epochs = format_epochs(entry["best_epoch"])
            if entry["status"] == "failed":
                test += f" ⚠ {entry['error']}"
        rows.append(
            f"| `{cell_id}` | {mark} | {valid} | {test} | {epochs} | {_published(cell_id)} | "
            f"{_run_links(entry, ui_base_url, experiment_id)} | `{entry['cell_digest'][:12]}` |"
        )
    return rows


def study_cells(study: str, task: str, results: dict) -> list[str]:
    return [c for c in STUDIES[study] if c.startswith(f"{task}-") and c in results["cells"]]


def reference_cell(study: str, task: str, results: dict) -> str | None:
    """The recommended cell the others are compared with (the first one marked ✅)."""
    marked = [c for c in STUDIES[study] if c.startswith(f"{task}-") and c in RECOMMENDED[study]]
    usable = [c for c in marked if c in results["cells"] and results["cells"][c]["test"]["n"]]
    return usable[0] if usable else None


# -- sections ------------------------------------------------------------------------

def published_section(results: dict) -> list[str]:
    lines = ["", "## Against seed 000's published numbers", "",
             "Seed 000 published single runs; here each is compared with our mean over seeds. "
             "|Δ| > 2 std marks a published value outside two standard deviations of ours.", "",
             "| cell | published valid | ours valid | Δ valid | published test | ours test | Δ test | |Δ test| > 2 std |",
             "|---|---|---|---|---|---|---|---|"]
    for cell_id, (valid, test) in PUBLISHED.items():
        entry = results["cells"].get(cell_id)
        if entry is None or not entry["test"]["n"]:
            lines.append(f"| `{cell_id}` | {valid:.2f} | – | – | {test:.2f} | – | – | – |")
            continue
        ours_valid = json_float(entry["valid_best"]["mean"]) * 100
        ours_test = json_float(entry["test"]["mean"]) * 100
        std = json_float(entry["test"]["std"])
        beyond = "–" if std is None else ("yes" if abs(ours_test - test) > 2 * std * 100 else "no")
        lines.append(
            f"| `{cell_id}` | {valid:.2f} | {format_stat(entry['valid_best'], 'accuracy')} | "
            f"{ours_valid - valid:+.2f} | {test:.2f} | {format_stat(entry['test'], 'accuracy')} | "
            f"{ours_test - test:+.2f} | {beyond} |")
    return lines


def double_softmax_section(results: dict, histories: dict) -> list[str]:
    lines = ["", "## The source's own misuse: softmax followed by nn.CrossEntropyLoss", "",
             "Seed 000's \"categorical cross-entropy with softmax\" fed the softmax output into "
             "`nn.CrossEntropyLoss`, which applies (log-)softmax again: the loss sees "
             "softmax(softmax(z)). The `logits` cells give the loss the raw logits, the correct "
             "idiom (and `BCEWithLogitsLoss` for the sigmoid cells). Does the double softmax cost "
             "accuracy or speed of learning here?", "",
             "| as the source did | correct idiom | test (source) | test (correct) | Δ test, Welch | "
             "best epoch (source → correct) | valid at epoch 1 (source → correct) |",
             "|---|---|---|---|---|---|---|"]
    for source, correct in DOUBLE_SOFTMAX_PAIRS:
        if source not in results["cells"] or correct not in results["cells"]:
            continue
        a, b = results["cells"][source], results["cells"][correct]
        if not (a["test"]["n"] and b["test"]["n"]):
            continue
        comparison = compare(correct, source, results)
        first = [diagnostics.value_at(histories[c]["histories"], "valid_metric", lambda i: 1)
                 for c in (source, correct)]
        lines.append(
            f"| `{source}` | `{correct}` | {format_stat(a['test'], a['metric'])} | "
            f"{format_stat(b['test'], b['metric'])} | "
            f"{format_metric(comparison.difference, a['metric'], signed=True)}, {format_p(comparison.p_value)} | "
            f"{format_epochs(a['best_epoch'])} → {format_epochs(b['best_epoch'])} | "
            f"{_pct(first[0])} → {_pct(first[1])} |")
    return lines


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.2f}%"


def diagnostics_sections(results: dict, histories: dict, label_summary: dict, figure_dir: Path) -> list[str]:
    test_labels = label_summary["test"]
    targets_per_image = {"multilabel": sum(test_labels["multilabel"]["positive_share_per_output"]),
                         "multiclass": 1.0, "binary": 1.0, "probability": None}
    lines = ["", "## Diagnostics: why the failing configurations fail", "",
             "Logged every epoch on the valid set (outputs) and the training batches (gradient "
             "norms, mean over the epoch's steps); values are means over seeds at epoch 1 and at "
             "the last epoch each seed ran (where its training ended up). The statements under each table appear only when the numbers "
             "support them."]
    for number, section in enumerate(diagnostics.SECTIONS, 1):
        cells = [c for c in (section.reference, *section.cells) if c in results["cells"]]
        if len(cells) < 2:
            continue
        snaps = {c: diagnostics.snapshot(histories[c]["histories"], section.keys) for c in cells}
        task = results["cells"][cells[0]]["task"]
        lines += ["", f"### {section.title}", "", f"The seed's explanation: {section.guess}.", "",
                  *diagnostics.table(section, snaps), ""]
        failed = [f"`{c}` failed: {results['cells'][c]['error']}" for c in cells if not results["cells"][c]["test"]["n"]]
        found = diagnostics.statements(section, snaps, targets_per_image.get(task)) + failed
        lines += [f"- {text}" for text in found] or ["- No diagnostic separates these cells from the recommended one."]
        path = figure_dir / f"diagnostics-{number}.png"
        figures.diagnostic_panels(section.title, list(section.keys),
                                  {c: histories[c]["histories"] for c in cells}, path)
        lines += ["", f"![{section.title}]({FIGURES}/{path.name})"]
    return lines


# -- report --------------------------------------------------------------------------

def render_report(results: dict, params: Params, histories: dict, label_summary: dict,
                  figure_dir: Path, experiment_id: str | None) -> str:
    task_baselines: dict[str, Baseline] = baselines(label_summary)
    lines = [
        "# Loss functions and final activations that do not fit the task",
        "",
        f"The CNN of STUDY.md on MNIST ({params.data.n_train} train / {params.data.n_valid} valid / "
        f"{params.data.n_test} test images), seeds {params.seeds}, AdamW lr {params.protocol.lr}, "
        f"batch {params.protocol.batch_size}, early stopping with patience {params.protocol.patience} "
        "on the valid metric; test metrics from each seed's best-valid checkpoint. Values are "
        "mean ± sample std over seeds (n = seeds with a result). Accuracy in percent; MSE in the "
        "target's original units (strokes²). Differences against a task's recommended cell are "
        f"tested with Welch's t-test over seeds (two-sided, α = {ALPHA}).",
        "",
        "Generated by `dvc repro` (stage `report`) from `metrics/*.json`, `models/*/record.json` and "
        "`data/labels/summary.json`; nothing here is typed by hand. `misfit audit <cell>` shows "
        "everything behind a row.",
    ]
    links = (params.tracking.ui_base_url, experiment_id)
    for study in STUDIES:
        if not any(study_cells(study, task, results) for task in TASK_ORDER):
            continue
        lines += ["", f"## {STUDY_TITLES[study]}"]
        if study == ADDED:
            cells = [c for task in TASK_ORDER for c in study_cells(study, task, results)]
            if cells:
                lines += ["", *table_rows(study, cells, results, *links), "",
                          "Each is compared with the way the seeds wrote it in "
                          "[the source's own misuse](#the-sources-own-misuse-softmax-followed-by-nncrossentropyloss)."]
        for task in TASK_ORDER if study != ADDED else ():
            cells = study_cells(study, task, results)
            if not cells:
                continue
            lines += ["", f"### {study} · {task}", "", *table_rows(study, cells, results, *links), "",
                      task_finding(cells, reference_cell(study, task, results), results, task_baselines[task])]
        groups = {t: [(c, results["cells"][c]) for c in study_cells(study, t, results)] for t in TASK_ORDER}
        if any(groups.values()):
            path = figure_dir / f"test-{study.lower()}.png"
            figures.test_bars(STUDY_TITLES[study], groups, path)
            lines += ["", f"![{STUDY_TITLES[study]}]({FIGURES}/{path.name})"]
    lines += published_section(results)
    lines += double_softmax_section(results, histories)
    lines += diagnostics_sections(results, histories, label_summary, figure_dir)
    lines += ["", "## Learning curves", ""]
    for task in TASK_ORDER:
        cells = [c for c in results["cells"] if results["cells"][c]["task"] == task]
        if not cells:
            continue
        path = figure_dir / f"curves-{task}.png"
        figures.learning_curves(task, results["cells"][cells[0]]["metric"],
                                {c: histories[c]["histories"] for c in cells}, path)
        lines += [f"![{task} learning curves]({FIGURES}/{path.name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def experiment_id_of(root: Path, params: Params) -> str | None:
    if not params.tracking.ui_base_url:
        return None
    from misfit.tracking import open_experiment

    return open_experiment(root, params.tracking.experiment)[1]


def write_report(root: Path = Path(".")) -> None:
    params = load_params(root / PARAMS_FILE)
    results = collect_results(root, params)
    histories = load_histories(root, params.cells)
    label_summary = read_json(root / LABELS_DIR / "summary.json")
    with atomic_dir(root / REPORTS_DIR / FIGURES) as figure_dir:
        report = render_report(results, params, histories, label_summary, figure_dir,
                               experiment_id_of(root, params))
        n_figures = len(list(figure_dir.glob("*.png")))
    write_json_atomic(root / REPORTS_DIR / "results.json", results)
    write_text_atomic(root / REPORTS_DIR / "report.md", report)
    print(f"wrote {REPORTS_DIR / 'report.md'}, {REPORTS_DIR / 'results.json'} and {n_figures} figures "
          f"({len(results['cells'])} cells)")
