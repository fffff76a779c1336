"""The report stage: reports/results.json, reports/report.md and reports/figures/.

Every number is read from the train stage's records (records/<cell>.json: every run,
every epoch), the label summary (what a constant answer scores) and the published single
runs (misfit.core.study for seed 000, reference/author_s1.json for the author's completed S1
tables); none is typed by hand. Runs are first sorted into outcome modes (misfit.report.modes);
values are summarised within a mode, and comparisons are intervals (misfit.report.findings).
"""
from __future__ import annotations

import math
import re
import statistics

import numpy as np
from pathlib import Path

from misfit.core.config import Params, load_params
from misfit.report.compare import reference_of
from misfit.report.render_findings import findings_section
from misfit.core.files import (
    atomic_dir,
    json_float,
    read_json,
    write_json_atomic,
    write_text_atomic,
)
from misfit.core.layout import LABEL_SUMMARY, PARAMS_FILE, REPORTS_DIR, TEST_LABELS
from misfit.core.study import (
    ADDED,
    PUBLISHED,
    S0,
    S1,
    STUDIES,
    STUDY_TITLES,
    TASK_ORDER,
    recommended_in,
)
from misfit.report import diagnostics, figures
from misfit.report.findings import (
    Cell,
    Published,
    baselines,
    cell_summary,
    format_modes,
    judge_published,
    source_offsets,
    task_components,
    load_cells,
    relu_lottery,
)
from misfit.report.intervals import holm, welch_difference
from misfit.report.modes import (
    CONSTANT,
    DEAD_RELU,
    DIVERGED,
    FAILED,
    LEARNED,
    WORSE,
    mode_counts,
)

FIGURES = "figures"
REFERENCE_FILE = Path("reference/author_s1.json")  # the author's completed S1 tables, with their source
RELU_CELLS = ("regression-relu-mse-zscore", "regression-relu-mse-raw")
DOUBLE_SOFTMAX_PAIRS = (("binary-softmax-ce", "binary-logits-ce"),
                        ("multiclass-softmax-ce", "multiclass-logits-ce"),
                        ("probability-sigmoid-bce", "probability-logits-bcelogits"),
                        ("multilabel-sigmoid-bce", "multilabel-logits-bcelogits"))
SOURCES = {S0: "seed 000, published", S1: "author, completed S1"}
SHOWN_DETAILS = 4  # per mode in a table cell; every run's detail is in results.json
DECIMAL = re.compile(r"-?\d+\.\d+")
FAILURE_SECTIONS = ((CONSTANT, "One constant answer"), (DEAD_RELU, "A dead ReLU output"),
                    (WORSE, "Varied answers, no better than a constant"))


# -- data ----------------------------------------------------------------------------

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
    with np.load(root / TEST_LABELS) as arrays:
        return arrays[task]


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
                     "cells": {}, "families": {}, "double_softmax": double_softmax(cells)}
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
    return results


def cell_entry(cell: Cell) -> dict:
    return {
        "task": cell.task, "metric": cell.metric, "seeds": [r.seed for r in cell.runs],
        "parent_run": cell.record["parent_run_id"], "cell_digest": cell.record["cell_digest"],
        **cell_summary(cell),
        "all_match_record": all(r.record["evaluated"]["matches_record"] is not False
                                for r in cell.runs + cell.draw_runs),
        "runs": [run_entry(r) for r in cell.runs + cell.draw_runs],
    }


def run_entry(run) -> dict:
    keys = ("run_id", "config_digest", "status", "error", "valid_best", "test", "best_epoch", "epochs_run")
    return {"seed": run.seed, "subset_seed": run.subset_seed, "mode": run.outcome.mode,
            "detail": run.outcome.detail, **{k: run.record[k] for k in keys}}


def double_softmax(cells: dict[str, Cell]) -> list[dict]:
    rows, tested = [], []
    for source, correct in DOUBLE_SOFTMAX_PAIRS:
        if source not in cells or correct not in cells:
            continue
        a, b = cells[source], cells[correct]
        row = {"source": source, "correct": correct,
               "epoch1_valid": [_median_at_epoch(c, 1) for c in (a, b)],
               "best_epoch": [_median([r.record["best_epoch"] for r in c.runs]) for c in (a, b)]}
        difference = welch_difference(b.values(), a.values()) if a.learns and b.learns else None
        if difference:
            row.update(estimate=difference.estimate, ci=[difference.low, difference.high], p=difference.p_value)
            tested.append(row)
        else:
            row["reason"] = f"not both all learned ({format_modes(a.modes)}; {format_modes(b.modes)})"
        rows.append(row)
    for row, adjusted in zip(tested, holm([r["p"] for r in tested])):
        row["p_holm"] = adjusted
    return rows


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _median_at_epoch(cell: Cell, epoch: int) -> float | None:
    values = [json_float(row["valid_metric"]) for r in cell.runs for row in r.record["history"]
              if row["epoch"] == epoch]
    return _median(values)


# -- formatting ----------------------------------------------------------------------

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
    as one group with the numbers' range; whole numbers (a digit, an epoch) stay apart."""
    groups: dict[str, list[list[str]]] = {}
    for detail in details:
        if detail:
            groups.setdefault(DECIMAL.sub("{}", detail), []).append(DECIMAL.findall(detail))
    texts = []
    for template, numbers in sorted(groups.items(), key=lambda item: -len(item[1])):
        slots = [sorted(set(column), key=float) for column in zip(*numbers)]
        text = template.format(*(s[0] if len(s) == 1 else f"{s[0]} to {s[-1]}" for s in slots))
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
    stuck = [r for r in cell.runs if r.outcome.mode in (CONSTANT, DEAD_RELU) and r.record["best_epoch"] == 1]
    parts = []
    for mode, runs in cell.by_mode.items():
        epochs = [r.record["best_epoch"] for r in runs if r not in stuck and r.record["best_epoch"]]
        if epochs:
            prefix = f"{mode}: " if len(cell.modes) > 1 else ""
            parts.append(f"{prefix}{statistics.median(epochs):g} ({min(epochs)}–{max(epochs)})")
    if stuck:
        parts.append(f"{len(stuck)}/{len(cell.runs)} never improved after epoch 1")
    return "; ".join(parts) or "–"


def published_text(cell_id: str, study: str, published: dict) -> str:
    found = published[study].get(cell_id)
    if found is None:
        return ""
    metric = "mse" if cell_id.startswith("regression") else "accuracy"
    return f"{fmt(found.valid, metric)} / {fmt(found.test, metric)}"


def run_ids(cell: Cell, links: tuple[str | None, str | None]) -> str:
    """The main draw's run ids; links into the MLflow UI when tracking.ui_base_url is set."""
    base, experiment_id = links
    ids = [r.record["run_id"] for r in cell.runs]
    if base and experiment_id:
        return " ".join(f"[{i[:8]}]({base.rstrip('/')}/#/experiments/{experiment_id}/runs/{i})" for i in ids)
    return " ".join(f"`{i[:8]}`" for i in ids)


def experiment_id_of(root: Path, params: Params) -> str | None:
    if not params.tracking.ui_base_url:
        return None
    from misfit.track.store import open_experiment

    return open_experiment(root, params.tracking.experiment)[1]


# -- sections ------------------------------------------------------------------------

def study_table(study: str, members: list[Cell], results: dict, published: dict, links) -> list[str]:
    metric = members[0].metric
    unit = "accuracy %" if metric == "accuracy" else "MSE, strokes²; lower is better"
    source = f" {SOURCES[study]} (valid / test) |" if study in SOURCES else ""
    rows = [f"| cell | seed's mark | outcomes (main draw) | test ({unit}) | valid best | best epoch |{source} "
            "MLflow runs | config digest |",
            "|---|---|---|---|---|---|" + ("---|" if source else "") + "---|---|"]
    for cell in members:
        entry = results["cells"][cell.cell_id]
        valid = cell_summary_valid(cell)
        mark = "✅" if recommended_in(cell.cell_id, study) else "❌"
        pub = f" {published_text(cell.cell_id, study, published)} |" if source else ""
        rows.append(f"| `{cell.cell_id}` | {mark} | {modes_text(cell)} | {value_text(cell, entry)} | {valid} | "
                    f"{epochs_text(cell)} |{pub} {run_ids(cell, links)} | `{entry['cell_digest'][:12]}` |")
    return rows


def cell_summary_valid(cell: Cell) -> str:
    """The median best valid value, per mode where the runs split (a median across modes
    can fall between them, on no run's value)."""
    parts = []
    for mode, runs in cell.by_mode.items():
        values = [json_float(r.record["valid_best"]) for r in runs if r.test is not None]
        if values:
            median = fmt(statistics.median(values), cell.metric)
            parts.append(f"{median} (median)" if len(cell.modes) == 1 else f"{mode}: {median}")
    return "; ".join(parts) or "–"


def family_finding(study: str, task: str, results: dict, cells: dict[str, Cell], baseline) -> list[str]:
    """Each cell against the table's ✅ reference, over every draw (the comparisons of
    results.json, simultaneous over the task's family), then failures and constant answers."""
    from misfit.report.compare import find_comparison
    from misfit.report.render_findings import effect_text

    info = results["families"][f"{study}/{task}"]
    lines = []
    reference = info["reference"]
    metric = cells[info["cells"][0]].metric
    if reference:
        lines.append(f"Against `{reference}` ✅, over every draw (paired by draw and seed; the interval is "
                     "simultaneous over the task's comparisons and includes the test set's noise):")
        for cell_id in info["cells"]:
            entry = find_comparison(results["comparisons"], cell_id, reference) if cell_id != reference else None
            if entry:
                lines.append(f"- `{cell_id}`: {effect_text(entry, cell_id)}.")
    else:
        lines.append("No ✅ cell of this table has every run learned, so nothing is compared with it.")
    for cell_id in info["cells"]:
        cell = cells[cell_id]
        errors = sorted({r.outcome.detail for r in cell.runs if r.outcome.mode in (FAILED, DIVERGED)})
        for error in errors:
            which = [str(r.seed) for r in cell.runs if r.outcome.detail == error]
            lines.append(f"- `{cell_id}` seed(s) {', '.join(which)}: {error}.")
        lines += constant_answer_lines(cell, baseline)
    name = "The train-mean baseline" if metric == "mse" else "The best constant answer"
    lines.append(f"- {name} ({baseline.text}) scores {fmt(baseline.value, metric)} on test.")
    return lines


def constant_answer_lines(cell: Cell, baseline) -> list[str]:
    """A classifier's constant runs, per answer: what that answer scores next to the best
    constant answer (a collapse to the minority answer scores below it)."""
    if cell.metric != "accuracy":
        return []
    lines = []
    runs = [r for r in cell.runs if r.outcome.mode == CONSTANT and r.test is not None]
    for answer in sorted({r.outcome.detail for r in runs}):
        scores = [r.test for r in runs if r.outcome.detail == answer]
        low, high = fmt(min(scores), cell.metric), fmt(max(scores), cell.metric)
        shown = f"{low}%" if low == high else f"{low}–{high}%"
        gap = baseline.value - max(scores)
        versus = ("as much as the best constant answer" if gap <= 1e-9 else
                  f"{fmt(gap, cell.metric)} points less than the best constant answer: not the majority answer")
        lines.append(f"- `{cell.cell_id}`: {len(scores)}/{len(cell.runs)} runs answer {answer} for (nearly) every "
                     f"image, which scores {shown} on test, {versus}.")
    return lines


def _p_relation(value: float) -> str:
    """The relation that follows "p_Holm": '= 0.031' or '< 0.001'."""
    text = _p(value)
    return text if text.startswith("<") else f"= {text}"


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def published_section(results: dict, cells: dict[str, Cell], params: Params) -> list[str]:
    lines = ["", "## Against the published single runs", "",
             "Each source published one run per cell, from a data draw of its own. A single new run "
             "varies with the draw *and* the seed, so each published valid and test value is set against a "
             "95% prediction interval for one new run on a new draw with a new seed, from every run of the "
             f"cell on our {1 + len(params.draws.subset_seeds)} draws: draw and seed as crossed random effects, "
             "their variances pooled over the task's cells whose runs all learned (MSE on a log scale). "
             "Where our runs split into modes, there is no single interval: the published test value is "
             "matched to the mode whose range it falls in.", ""]
    for study in (S0, S1):
        lines += [f"### {SOURCES[study]}", "",
                  "| cell | published valid / test | our runs | valid: 95% prediction interval | "
                  "test: 95% prediction interval (σ draw, σ seed) | explanation |", "|---|---|---|---|---|---|"]
        for cell_id, entry in results["cells"].items():
            for judged in entry["published"]:
                if judged["source"] != SOURCES[study]:
                    continue
                metric = cells[cell_id].metric
                lines.append(f"| `{cell_id}` | {fmt(judged['valid'], metric)} / {fmt(judged['test'], metric)} | "
                             f"{judged['runs']} on {judged['draws']} draws: {format_modes(judged['modes'])} | "
                             f"{_pi_text(judged.get('valid_interval'), judged.get('valid_inside'), metric, False)} | "
                             f"{_pi_text(judged.get('test_interval'), judged['inside'], metric, True)} | "
                             f"{judged.get('explanation') or ''} |")
        lines += ["", *offset_lines(results["published_offsets"].get(SOURCES[study], {})), ""]
    return lines


def _pi_text(interval: dict | None, inside: bool | None, metric: str, spreads: bool) -> str:
    if not interval:
        return "–" if inside is None else ("inside a mode's range" if inside else "**outside**")
    text = f"[{fmt(interval['low'], metric)}, {fmt(interval['high'], metric)}]"
    if spreads and metric == "accuracy":
        text += f" ({fmt(interval['sd_draw'], metric)}, {fmt(interval['sd_seed'], metric)})"
    return text + (" inside" if inside else " **outside**")


def offset_lines(offsets: dict) -> list[str]:
    """One line per (valid/test, metric): the source's mean offset from our means."""
    lines = []
    for key, found in offsets.items():
        which, metric = key.split("/")
        low, high = found["ci"]
        if metric == "accuracy":
            text = f"{found['mean_offset'] * 100:+.2f} points [{low * 100:+.2f}, {high * 100:+.2f}]"
        else:
            text = f"×{math.exp(found['mean_offset']):.3f} [{math.exp(low):.3f}, {math.exp(high):.3f}]"
        verdict = ("offset as a group (p %.3f): more than independent single runs scatter; one draw of its own "
                   "for all its cells would move them together" % found["p"] if found["p"] < 0.05
                   else "no group offset shown (p %.2f; not evidence of none)" % found["p"])
        lines.append(f"- {which} {metric}, over {len(found['cells'])} cells: mean published − ours {text}: {verdict}.")
    return lines


def glance_section(results: dict, cells: dict[str, Cell]) -> list[str]:
    """The headline counts, each computed from the tables below it."""
    main = [r for c in cells.values() for r in c.runs]
    further = sum(len(c.draw_runs) for c in cells.values())
    learned_all = [c for c in cells.values() if c.single_mode == LEARNED]
    lines = ["", "## At a glance", "",
             f"- **Runs:** {len(main) + further} in {len(cells)} cells: {len(main)} on the main draw "
             f"({format_modes(mode_counts([r.outcome for r in main]))}) and {further} on further draws.",
             f"- **Cells whose every run learned:** {len(learned_all)}/{len(cells)}."]
    never = [c for c in cells.values() if c.modes and LEARNED not in c.modes]
    if never:
        lines.append("- **Cells where no run learned:** " + "; ".join(
            f"`{c.cell_id}` ({format_modes(c.modes)})" for c in never) + ".")
    split = [c for c in cells.values() if LEARNED in c.modes and len(c.modes) > 1]
    if split:
        lines.append("- **Cells whose runs split into modes** (a mean over them would be no run's value): " + "; ".join(
            f"`{c.cell_id}` ({format_modes(c.modes)})" for c in split) + ".")
    for cell_id in RELU_CELLS:
        if cell_id in results["cells"]:
            survival = results["cells"][cell_id]["relu"]["survival"]
            low, high = survival["ci"]
            lines.append(f"- **`{cell_id}`:** the ReLU survived in {survival['alive']}/{survival['n']} seeds "
                         f"(95% CI {low:.0%}–{high:.0%}).")
    verdicts: dict[str, int] = {}
    for entry in results["comparisons"]:
        verdicts[entry["verdict"]] = verdicts.get(entry["verdict"], 0) + 1
    lines.append(f"- **Comparisons, over every draw:** {len(results['comparisons'])}: "
                 + ", ".join(f"{n} {verdict}" for verdict, n in sorted(verdicts.items())) + ".")
    judged = [(cell_id, j) for cell_id, e in results["cells"].items() for j in e["published"]]
    outside = [(cell_id, j) for cell_id, j in judged if not j["inside"]]
    lines.append(f"- **Published single runs:** {len(judged) - len(outside)} of {len(judged)} fall inside our "
                 "prediction interval for one new run, or inside the range of one of our modes"
                 + (": every one." if not outside else "; outside: " + "; ".join(
                     f"`{cell_id}` ({j['source']}, test {fmt(j['test'], cells[cell_id].metric)})"
                     for cell_id, j in outside) + " — why, in [Against the published single runs]"
                     "(#against-the-published-single-runs)."))
    return lines


def relu_section(results: dict, cells: dict[str, Cell]) -> list[str]:
    lines = ["", "## The ReLU regression cells are a lottery", "",
             "At initialisation the final pre-activation is nearly the same for every image, so a ReLU "
             "output starts either live for (nearly) all images or dead for all; a dead one passes no "
             "gradient and never recovers, and AdamW's first steps kill some of the live ones. Survival = "
             "runs whose ReLU is live at the kept checkpoint, with a Wilson 95% interval."]
    for cell_id in RELU_CELLS:
        if cell_id not in results["cells"]:
            continue
        relu = results["cells"][cell_id]["relu"]
        survival = relu["survival"]
        low, high = survival["ci"]
        lines += ["", f"### `{cell_id}`", "",
                  f"- Survived: **{survival['alive']}/{survival['n']}** ({survival['alive'] / survival['n']:.0%}, "
                  f"95% CI {low:.0%}–{high:.0%}); seeds {relu['survivors']}.",
                  f"- Dead: {relu['dead_at_init']} at initialisation, {relu['died_in_training']} in training; "
                  f"their test MSE {_range_text(relu['dead_test'])}."]
        if survival["alive"]:
            lines.append(f"- The live runs end as {format_modes(relu['alive_modes'])}; test MSE "
                         f"{_range_text(relu['alive_test'])}.")
        if "clip_bound" in relu:
            lines.append(f"- The best a z-scored ReLU output can score (the train mean for every target below "
                         f"it, every other target exact): test MSE {relu['clip_bound']:.4f}.")
        if "zero_mse" in relu:
            lines.append(f"- Always predicting 0 (a dead raw-target ReLU) scores {relu['zero_mse']:.4f}.")
    return lines


def _range_text(summary: dict) -> str:
    if not summary["n"]:
        return "–"
    if summary["n"] == 1:
        return f"{summary['median']:.4f}"
    return f"median {summary['median']:.4f} ({summary['min']:.4f}–{summary['max']:.4f}, n = {summary['n']})"


def double_softmax_section(results: dict, cells: dict[str, Cell]) -> list[str]:
    lines = ["", "## The source's own misuse: softmax followed by nn.CrossEntropyLoss", "",
             "Seed 000's \"categorical cross-entropy with softmax\" fed the softmax output into "
             "`nn.CrossEntropyLoss`, which applies (log-)softmax again. The `logits` cells give the loss "
             "the raw logits (and `BCEWithLogitsLoss` for the sigmoid cells). Δ = correct − source on test, "
             "Welch's 95% interval, p Holm-adjusted over the pairs tested.", "",
             "| as the source did | correct idiom | Δ test [95% CI] | p_Holm | median best epoch (source → correct) | "
             "median valid at epoch 1 (source → correct) |", "|---|---|---|---|---|---|"]
    for row in results["double_softmax"]:
        metric = cells[row["source"]].metric
        if "ci" in row:
            delta = f"{fmt(row['estimate'], metric, True)} [{fmt(row['ci'][0], metric, True)}, {fmt(row['ci'][1], metric, True)}]"
            p = _p(row["p_holm"])
        else:
            delta, p = row["reason"], "–"
        epochs = " → ".join("–" if e is None else f"{e:g}" for e in row["best_epoch"])
        first = " → ".join(fmt(v, metric) for v in row["epoch1_valid"])
        lines.append(f"| `{row['source']}` | `{row['correct']}` | {delta} | {p} | {epochs} | {first} |")
    return lines


def diagnostics_sections(cells: dict[str, Cell], results: dict, label_summary: dict, figure_dir: Path) -> list[str]:
    test_labels = label_summary["test"]
    targets_per_image = {"multilabel": sum(test_labels["multilabel"]["positive_share_per_output"]),
                         "multiclass": 1.0, "binary": 1.0}
    lines = ["", "## Diagnostics: how the failing runs fail", "",
             "Grouped by what happened to the runs, not by configuration. Each row is one cell's runs in "
             "that mode (never an average across modes), next to the recommended cell's runs, with the "
             "diagnostics logged on the valid set every epoch (gradient norms: mean over the epoch's "
             "steps) at epoch 1 → the last epoch each run trained. Statements appear only when the "
             "numbers support them."]
    number = 0
    for mode, title in FAILURE_SECTIONS:
        for section in diagnostics.sections_for(mode, title):
            regression = section.keys == diagnostics.REGRESSION_KEYS
            affected = [c for c in cells.values() if (c.task == "regression") == regression
                        and mode in c.modes]
            if not affected:
                continue
            number += 1
            groups, statements = {}, []
            references = _references(affected, cells)
            for ref in references.values():
                if ref is not None:
                    groups[f"`{ref.cell_id}` (recommended, learned)"] = [r.record["history"] for r in ref.runs]
            for cell in affected:
                runs = cell.by_mode[mode]
                label = f"`{cell.cell_id}` ({len(runs)}/{len(cell.runs)} {mode})"
                groups[label] = [r.record["history"] for r in runs]
                snap = diagnostics.snapshot(groups[label], section.keys)
                ref = references[cell.task]
                ref_snap = diagnostics.snapshot([r.record["history"] for r in ref.runs], section.keys) if ref else None
                statements += diagnostics.statements(cell.cell_id, snap, ref_snap, targets_per_image.get(cell.task))
            snaps = {label: diagnostics.snapshot(h, section.keys) for label, h in groups.items()}
            lines += ["", f"### {section.title}", "", *diagnostics.table(section, snaps), ""]
            guesses = {diagnostics.seed_guess(c.cell_id) for c in affected} - {None}
            lines += [f"- The seeds' explanation: {g}." for g in sorted(guesses)]
            lines += [f"- {s}" for s in statements]
            path = figure_dir / f"diagnostics-{number}.png"
            figures.diagnostic_panels(section.title, list(section.keys), groups, path)
            lines += ["", f"![{section.title}]({FIGURES}/{path.name})"]
    return lines


def _references(affected: list[Cell], cells: dict[str, Cell]) -> dict[str, Cell | None]:
    return {task: reference_of(S0, task, cells) or reference_of(S1, task, cells)
            for task in dict.fromkeys(c.task for c in affected)}  # in the cells' order: a set's varies by process


def per_run_section(cells: dict[str, Cell]) -> list[str]:
    lines = ["", "## Every run", "",
             "Test value and outcome of every run; `d<k>` marks a run on a further data draw "
             "(`data.subset_seed` k). Run ids resolve with `misfit audit <id>`.", "",
             "| cell | runs: seed value (mode) |", "|---|---|"]
    for cell in cells.values():
        parts = []
        for run in cell.runs + cell.draw_runs:
            draw = f"d{run.subset_seed}/" if run in cell.draw_runs else ""
            parts.append(f"{draw}{run.seed}: {fmt(run.test, cell.metric)} ({run.outcome.mode})")
        lines.append(f"| `{cell.cell_id}` | {'; '.join(parts)} |")
    return lines


# -- report --------------------------------------------------------------------------

def render_report(cells: dict[str, Cell], results: dict, published: dict, params: Params,
                  label_summary: dict, figure_dir: Path, experiment_id: str | None = None) -> str:
    links = (params.tracking.ui_base_url, experiment_id)
    task_baselines = baselines(label_summary)
    seeds = params.seeds
    lines = [
        "# Loss functions and final activations that do not fit the task",
        "",
        f"The CNN of STUDY.md on MNIST ({params.data.n_train} train / {params.data.n_valid} valid / "
        f"{params.data.n_test} test images, draw `data.subset_seed` = {params.data.subset_seed}), seeds {seeds} "
        f"(the ReLU regression cells: {len(params.seeds_of(RELU_CELLS[0])) if RELU_CELLS[0] in params.cells else '–'}), "
        f"AdamW lr {params.protocol.lr}, batch {params.protocol.batch_size}, early stopping with patience "
        f"{params.protocol.patience} on the valid metric; test metrics from each run's best-valid checkpoint, "
        "scored again with the reference model. Accuracy in percent; MSE in strokes².",
        "",
        "**How to read the tables.** Every run is first given an outcome mode from what it logged "
        "(`misfit/modes.py`): `learned`; `constant` (one answer for ≥ 99% of the valid images, or "
        "predictions with < 5% of the targets' spread: which answer is named); `dead-relu` (a ReLU "
        "output that is 0 for ≥ 99% of the images); `worse-than-constant` (varied answers that score no "
        "better than the best constant answer); `diverged` (a non-finite loss or metric); `failed` "
        "(an error, no result). Where every run of a cell is in one mode the test column gives mean ± "
        "sd [95% t interval of the mean]; otherwise each mode's median (range). Comparisons are "
        "differences with 95% intervals and Holm-adjusted p-values, only between cells whose runs all "
        "learned; a p above 0.05 means no difference was *detected* at this n, not that there is none.",
        "",
        "Generated by `dvc repro` (stage `report`) from `records/*.json`, `data/label_summary.json` and "
        "`reference/author_s1.json`; nothing here is typed by hand. `misfit audit <cell or run id>` shows "
        "everything behind a row.",
    ]
    lines += findings_section(results, params.report.alpha, params.report.margins.model_dump())
    lines += [
        "", "**Glossary.** *S0*: seed 000's study of loss functions; *S1*: seed 001's study of final "
        "activations (the seeds are the two source write-ups, `seeds/000_…` and `seeds/001_…`). *RNG seed* "
        "(`seed 0`, `seed 1`, …): the random seed of one training run — a different thing from a write-up. "
        "*Draw*: one random 5,000-image subset of MNIST's training images (`data.subset_seed`); every run "
        "is tested on the same 10,000 official test images. *✅ / ❌*: the configuration the seed recommends "
        "or not — the seed's mark, not our verdict. *Train-mean baseline*: always predicting the train "
        "targets' mean (regression); the best constant answer of a classifier is its majority class."]
    lines += evidence_figures(results, cells, figure_dir)
    lines += glance_section(results, cells)
    for study in STUDIES:
        members_by_task = {t: family(study, t, cells) for t in TASK_ORDER}
        if not any(members_by_task.values()):
            continue
        lines += ["", f"## {STUDY_TITLES[study]}"]
        for task, members in members_by_task.items():
            if not members:
                continue
            lines += ["", f"### {study} · {task}", "", *study_table(study, members, results, published, links), "",
                      *family_finding(study, task, results, cells, task_baselines[task])]
        path = figure_dir / f"test-{study.lower()}.png"
        figures.test_points(STUDY_TITLES[study], {
            t: [(c.cell_id, [(r.test, r.outcome.mode) for r in c.runs]) for c in m]
            for t, m in members_by_task.items()}, {t: b.value for t, b in task_baselines.items()}, path)
        lines += ["", f"![{STUDY_TITLES[study]}]({FIGURES}/{path.name})"]
    lines += relu_section(results, cells)
    lines += published_section(results, cells, params)
    lines += double_softmax_section(results, cells)
    lines += diagnostics_sections(cells, results, label_summary, figure_dir)
    lines += learning_curve_section(cells, figure_dir)
    lines += per_run_section(cells)
    return "\n".join(lines).rstrip() + "\n"


def evidence_figures(results: dict, cells: dict[str, Cell], figure_dir: Path) -> list[str]:
    """Per task: the forest plot of its comparisons and, where outputs are probabilities, the
    reliability of each cell's (both drawn from results.json)."""
    lines = ["", "### The comparisons and the calibration, per task", ""]
    for task in TASK_ORDER:
        forest_path = figure_dir / f"forest-{task}.png"
        figures.forest(task, [c for c in results["comparisons"] if c["task"] == task], forest_path)
        reliability_path = figure_dir / f"reliability-{task}.png"
        figures.reliability(task, {c: s["reliability"] for c, s in results["calibration"].items()
                                   if s and cells[c].task == task}, reliability_path)
        lines += [f"![{task}: {path.stem.split('-')[0]}]({FIGURES}/{path.name})"
                  for path in (forest_path, reliability_path) if path.exists()]
    return lines


def learning_curve_section(cells: dict[str, Cell], figure_dir: Path) -> list[str]:
    lines = ["", "## Learning curves", ""]
    for task in TASK_ORDER:
        members = [c for c in cells.values() if c.task == task]
        if not members:
            continue
        curves = {}
        for cell in members:
            if cell.modes:
                common = max(cell.modes, key=cell.modes.get)
                curves[f"{cell.cell_id} ({common})"] = [r.record["history"] for r in cell.runs
                                                        if r.outcome.mode == common]
        path = figure_dir / f"curves-{task}.png"
        figures.learning_curves(task, members[0].metric, curves, path)
        lines += [f"![{task} learning curves]({FIGURES}/{path.name})", ""]
    return lines


def write_report(root: Path = Path(".")) -> None:
    """reports/: every input is read and every record validated first, and the old files are
    replaced only once all the new ones are made, so a broken input stops the stage with one
    line naming the file and leaves the committed report as it was (dvc.yaml marks these
    outputs `persist: true`: DVC would otherwise delete them before the stage runs)."""
    from misfit.core.errors import DataError

    params = load_params(root / PARAMS_FILE)
    try:
        label_summary = read_json(root / LABEL_SUMMARY)
    except (OSError, ValueError) as error:
        raise DataError(f"{root / LABEL_SUMMARY}: not readable JSON ({error}); rerun label-derive") from None
    try:
        cells = load_cells(root, params, label_summary)  # load_joined: each record, validated
    except FileNotFoundError as error:  # its message names the record and the stage to run
        raise DataError(str(error)) from None
    published = published_runs(root)
    results = analyse(cells, published, params, label_summary, root)
    with atomic_dir(root / REPORTS_DIR / FIGURES) as figure_dir:
        # the old figures are replaced when this block ends, after the report is rendered
        report = render_report(cells, results, published, params, label_summary, figure_dir,
                               experiment_id_of(root, params))
        n_figures = len(list(figure_dir.glob("*.png")))
    write_json_atomic(root / REPORTS_DIR / "results.json", results)
    write_text_atomic(root / REPORTS_DIR / "report.md", report)
    print(f"wrote {REPORTS_DIR / 'report.md'}, {REPORTS_DIR / 'results.json'} and {n_figures} figures "
          f"({len(results['cells'])} cells)")
