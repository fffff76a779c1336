"""The report's sections after the tables (published runs, the glance counts, the ReLU
lottery, the double softmax, the failure diagnostics, every run): formatting only."""

from __future__ import annotations

import math
from pathlib import Path

from misfit.core.config import Params
from misfit.core.study import (
    S0,
    S1,
)
from misfit.report import diagnostics, figures
from misfit.report.analysis import (
    FIGURES,
    RELU_CELLS,
    SOURCES,
)
from misfit.report.cells import (
    Cell,
    format_modes,
)
from misfit.report.compare import reference_of
from misfit.report.modes import (
    CONSTANT,
    DEAD_RELU,
    LEARNED,
    WORSE,
    mode_counts,
)
from misfit.report.tables import (
    fmt,
    per_mode_median,
    run_ids,
)

FAILURE_SECTIONS = ((CONSTANT, "One constant answer"), (DEAD_RELU, "A dead ReLU output"),
                    (WORSE, "Varied answers, no better than a constant"))


# -- data ----------------------------------------------------------------------------

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


def published_summary(results: dict) -> list[str]:
    """The body's word on the published numbers (the intervals are in the appendix): what the
    tables' inside / outside marks mean, and each source's offset from ours as a group."""
    if not any(e["published"] for e in results["cells"].values()):
        return []
    lines = ["", "## Against the published single runs", "",
             "Each source published one run per cell, from a data draw of its own. The tables above mark each "
             "published test number *inside* when it falls in our 95% prediction interval for one new run on a "
             "new draw with a new seed (draw and seed as crossed random effects, pooled per task), or, where our "
             "runs split into modes, in the range of one mode. The intervals, valid and test, with the "
             "explanation of each number outside: [runs.md](runs.md#against-the-published-single-runs)."]
    for study in (S0, S1):
        offsets = offset_lines(results["published_offsets"].get(SOURCES[study], {}))
        if offsets:
            lines += ["", f"{SOURCES[study]}, as a group:", *offsets]
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
    split = [c for c in cells.values() if len(c.modes) > 1]
    if split:
        lines.append("- **Cells whose runs split into modes** (a mean over them would be no run's value): " + "; ".join(
            f"`{c.cell_id}` ({format_modes(c.modes)})" for c in split) + ".")
    for cell_id in RELU_CELLS:
        if cell_id in results["cells"]:
            relu = results["cells"][cell_id]["relu"]
            survival = relu["survival"]
            low, high = survival["ci"]
            lines.append(f"- **`{cell_id}`:** the ReLU survived in {survival['alive']}/{survival['n']} seeds "
                         f"(95% CI {low:.0%}–{high:.0%}); {relu['alive_modes'].get(LEARNED, 0)} of those learned.")
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
                  f"- The ReLU is live (not dead) in **{survival['alive']}/{survival['n']}** ({survival['alive'] / survival['n']:.0%}, "
                  f"95% CI {low:.0%}–{high:.0%}); seeds {relu['survivors']}.",
                  f"- Dead: {relu['dead_at_init']} at initialisation, {relu['died_in_training']} in training; "
                  f"their test MSE {_range_text(relu['dead_test'])}."]
        if survival["alive"]:
            learned = relu["alive_modes"].get(LEARNED, 0)
            lines.append(f"- Of the live runs, {learned} learned: they end as {format_modes(relu['alive_modes'])}; "
                         f"test MSE {_range_text(relu['alive_test'])}.")
        if "clip_bound" in relu:
            lines.append(f"- The best a z-scored ReLU output can score (the train mean for every target below "
                         f"it, every other target exact): test MSE {relu['clip_bound']:.4f}.")
        if "zero_mse" in relu:
            lines.append(f"- Always predicting 0 (a dead raw-target ReLU) scores {relu['zero_mse']:.4f}.")
    return lines + shared_deaths_lines(results)


def shared_deaths_lines(results: dict) -> list[str]:
    """Whether the ReLU cells lose the same seeds at initialisation: a seed gives the same
    initial weights in every cell, and the target's scaling plays no part before the first
    step, so shared deaths are one draw of the lottery, not one per cell."""
    dead = {c: set(results["cells"][c]["relu"]["dead_at_init_seeds"]) for c in RELU_CELLS if c in results["cells"]}
    if len(dead) < 2 or not any(dead.values()):
        return []
    (first_cell, first), (second_cell, second) = dead.items()
    shared = sorted(first & second)
    if first == second:
        what = (f"Both cells lose the same {len(shared)} seeds at initialisation ({shared}): a seed gives the "
                "same initial weights in every cell and the target's scaling plays no part before the first "
                "step, so this is one draw of the lottery, not two.")
    else:
        what = (f"The cells share {len(shared)} of their deaths at initialisation ({shared}; "
                f"{len(first)} in `{first_cell}`, {len(second)} in `{second_cell}`).")
    return ["", what]


def _range_text(summary: dict) -> str:
    if not summary["n"]:
        return "–"
    if summary["n"] == 1:
        return f"{summary['median']:.4f}"
    return f"median {summary['median']:.4f} ({summary['min']:.4f}–{summary['max']:.4f}, n = {summary['n']})"


def double_softmax_section(results: dict, cells: dict[str, Cell]) -> list[str]:
    """The added `logits` cells, each beside the source's idiom it corrects: their own
    outcomes and test numbers, and the comparison over every draw."""
    from misfit.report.render_findings import effect_text

    lines = ["", "## Added cells: the loss on raw logits, against the source's idiom", "",
             "Seed 000 fed activated outputs to the loss: softmax into `nn.CrossEntropyLoss`, which applies "
             "(log-)softmax again (a double softmax), and sigmoid into `nn.BCELoss` (one squashing, but "
             "without the log-sum-exp that keeps `BCEWithLogitsLoss` stable). The added `logits` cells give the "
             "loss the raw logits. Outcomes and test values are the main draw's (median where the runs split into "
             "modes, per mode); the effect is the correct idiom's over every draw, as in the findings.", "",
             "| as the source did | correct idiom | outcomes (source → correct) | test (source → correct) | "
             "correct − source, over every draw | median best epoch (source → correct) | median valid at epoch 1 "
             "(source → correct) |", "|---|---|---|---|---|---|---|"]
    for row in results["double_softmax"]:
        source, correct = cells[row["source"]], cells[row["correct"]]
        effect = effect_text(row["comparison"], row["correct"]) if row["comparison"] else "not compared"
        epochs = " → ".join("–" if e is None else f"{e:g}" for e in row["best_epoch"])
        first = " → ".join(fmt(v, source.metric) for v in row["epoch1_valid"])
        outcomes = " → ".join(format_modes(c.modes) for c in (source, correct))
        tests = " → ".join(per_mode_median(c, lambda run: run.test) for c in (source, correct))
        lines.append(f"| `{row['source']}` | `{row['correct']}` | {outcomes} | {tests} | {effect} | {epochs} | {first} |")
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
                    groups[f"`{ref.cell_id}` (recommended, learned)"] = [r.history for r in ref.runs]
            for cell in affected:
                runs = cell.by_mode[mode]
                label = f"`{cell.cell_id}` ({len(runs)}/{len(cell.runs)} {mode})"
                groups[label] = [r.history for r in runs]
                snap = diagnostics.snapshot(groups[label], section.keys)
                ref = references[cell.task]
                ref_snap = diagnostics.snapshot([r.history for r in ref.runs], section.keys) if ref else None
                statements += diagnostics.statements(cell.cell_id, snap, ref_snap, targets_per_image.get(cell.task))
            snaps = {label: diagnostics.snapshot(h, section.keys) for label, h in groups.items()}
            lines += ["", f"### {section.title}", "", *diagnostics.table(section, snaps), ""]
            # the seed's explanation of a failure, only where the cell's runs do fail
            for cell in affected:
                guess = diagnostics.seed_guess(cell.cell_id)
                if guess and LEARNED not in cell.modes:
                    lines.append(f"- The seed's explanation for `{cell.cell_id}`: {guess}.")
                elif guess:
                    lines.append(f"- The seed expected `{cell.cell_id}` to fail ({guess}); here "
                                 f"{cell.modes[LEARNED]}/{len(cell.runs)} of its main-draw runs learned.")
            lines += [f"- {s}" for s in statements]
            path = figure_dir / f"diagnostics-{number}.png"
            figures.diagnostic_panels(section.title, list(section.keys), groups, path)
            lines += ["", f"![{section.title}]({FIGURES}/{path.name})"]
    return lines


def _references(affected: list[Cell], cells: dict[str, Cell]) -> dict[str, Cell | None]:
    found = {}
    for task in dict.fromkeys(c.task for c in affected):  # in the cells' order: a set's varies by process
        reference = reference_of(S0, task, cells) or reference_of(S1, task, cells)
        found[task] = cells[reference] if reference else None
    return found  # in the cells' order: a set's varies by process


def appendix(cells: dict[str, Cell], results: dict, links) -> str:
    """reports/runs.md: where every number comes from (each cell's config digest and MLflow
    runs) and every run's test value and mode, on every draw."""
    lines = ["# Every run, and where it comes from", "",
             "The appendix of [report.md](report.md). `d<k>/<s>`: a run on data draw k (`data.subset_seed`) "
             "with RNG seed s. Every id resolves with `misfit audit <id>`; a cell's config digest is the "
             "SHA-256 of its resolved configuration.", "",
             "| cell | config digest | parent run | runs on the main draw |", "|---|---|---|---|"]
    for cell in cells.values():
        entry = results["cells"][cell.cell_id]
        lines.append(f"| `{cell.cell_id}` | `{entry['cell_digest'][:12]}` | `{entry['parent_run']}` | "
                     f"{run_ids(cell, links)} |")
    lines += ["", "| cell | test value (mode) per run |", "|---|---|"]
    for cell in cells.values():
        parts = [f"d{run.subset_seed}/{run.seed}: {fmt(run.test, cell.metric)} ({run.outcome.mode})"
                 for run in cell.runs + cell.draw_runs]
        lines.append(f"| `{cell.cell_id}` | {'<br>'.join(parts)} |")
    return "\n".join(lines) + "\n"
