"""Which cells are compared, and each comparison's verdict, over every data draw.

A task's comparisons are one family: each cell of a study against that study's ✅ reference,
the added logits cells against S0's reference, and every pair a seed's claim names
(misfit.report.claims), each pair once. Two cells whose runs all learned are compared by
their scores (misfit.report.paired); where a cell's runs split into modes, by the share of
runs that learned (Fisher's exact test; a seed whose runs end the same way on every draw is
one trial, not one per draw).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from misfit.core.config import ReportConfig
from misfit.core.errors import DataError
from misfit.core.layout import PREDICTIONS_DIR
from misfit.core.study import ADDED, RECOMMENDED, S0, STUDIES, TASK_ORDER
from misfit.report.cells import Cell
from misfit.report.intervals import wilson
from misfit.report.modes import LEARNED
from misfit.report.paired import (
    ACCURACY,
    DIFFERS,
    DIFFERS_WITHIN,
    EQUIVALENT,
    UNDECIDED,
    Scores,
    decide,
    margin_on_scale,
    pair_up,
    pooled_components,
    probability_of_improvement,
    to_metric,
)


def higher_is_better(metric: str) -> bool:
    return metric == ACCURACY


def reference_of(study: str, task: str, cells: dict[str, Cell]) -> str | None:
    """The cell a study's others are compared with: its first ✅ cell of the task whose runs
    all learned (for the added logits cells: S0's)."""
    marked = [c for c in STUDIES[S0 if study == ADDED else study]
              if c.startswith(f"{task}-") and c in RECOMMENDED[S0 if study == ADDED else study] and c in cells]
    return next((c for c in marked if cells[c].all_learned), None)


def family_pairs(task: str, cells: dict[str, Cell], claim_pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every (cell, other) the task's findings need, each unordered pair once."""
    pairs: list[tuple[str, str]] = []
    for study in STUDIES:
        reference = reference_of(study, task, cells)
        members = [c for c in STUDIES[study] if c.startswith(f"{task}-") and c in cells]
        pairs += [(c, reference) for c in members if reference and c != reference]
    pairs += [(a, b) for a, b in claim_pairs if a.startswith(f"{task}-") and a in cells and b in cells]
    seen, unique = set(), []
    for a, b in pairs:
        if frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            unique.append((a, b))
    return unique


def run_scores(root: Path, cell: Cell) -> dict[tuple[int, int], Scores]:
    """Each learned run's test score and per-image terms, keyed by (draw, seed)."""
    path = root / PREDICTIONS_DIR / f"{cell.cell_id}.npz"
    try:
        with np.load(path) as arrays:
            rows = {(int(d), int(s)): i for i, (d, s) in enumerate(zip(arrays["subset_seeds"], arrays["seeds"]))}
            per_image = arrays["per_image"]
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"{path}: cannot read the per-image test scores ({error}); run evaluate@{cell.cell_id} "
                        "or `dvc pull` it") from None
    scores = {}
    for run in cell.runs + cell.draw_runs:
        key = (run.subset_seed, run.seed)
        if run.outcome.mode == LEARNED and run.test is not None and key in rows:
            scores[key] = Scores(run.test, per_image[rows[key]].astype(float))
    return scores


@dataclass(frozen=True)
class LearnedShare:
    """The share of a cell's runs that learned, counted as independent trials.

    Seed s starts from the same weights on every draw, so where the seeds' outcomes differ
    and each seed ends the same way on every draw, the seed decides: one trial per seed (the
    ReLU cells, dead or alive at initialisation). Otherwise one trial per run: where every run
    ends the same way, neither seed nor draw shows an effect to cluster by."""
    learned: int
    trials: int
    unit: str  # "seed" or "run"

    @classmethod
    def of(cls, cell: Cell) -> LearnedShare:
        runs = cell.runs + cell.draw_runs
        by_seed: dict[int, set[bool]] = {}
        for run in runs:
            by_seed.setdefault(run.seed, set()).add(run.outcome.mode == LEARNED)
        outcomes = set().union(*by_seed.values()) if by_seed else set()
        seed_decides = (len(outcomes) > 1 and all(len(v) == 1 for v in by_seed.values())
                        and any(len([r for r in runs if r.seed == s]) > 1 for s in by_seed))
        if seed_decides:
            return cls(sum(v == {True} for v in by_seed.values()), len(by_seed), "seed")
        return cls(sum(r.outcome.mode == LEARNED for r in runs), len(runs), "run")

    def as_dict(self) -> dict:
        rate = wilson(self.learned, self.trials)
        return {"learned": self.learned, "trials": self.trials, "unit": self.unit, "ci": [rate.low, rate.high]}


def compare_task(root: Path, task: str, cells: dict[str, Cell], claim_pairs: list[tuple[str, str]],
                 config: ReportConfig) -> list[dict]:
    """The task's family of comparisons, each with its verdict."""
    pairs = family_pairs(task, cells, claim_pairs)
    k = max(1, len(pairs))
    scored = [(a, b) for a, b in pairs if cells[a].all_learned and cells[b].all_learned]
    scores = {c: run_scores(root, cells[c]) for pair in scored for c in pair}
    metric = cells[pairs[0][0]].metric if pairs else ACCURACY
    paired = {(a, b): pair_up(scores[a], scores[b], metric) for a, b in scored}
    usable = [p for p in paired.values() if p.n > 1]
    components = pooled_components(usable) if usable else None
    margin = margin_on_scale(metric, config.margins.accuracy, config.margins.mse_ratio)
    found = []
    for a, b in pairs:
        entry = {"cell": a, "other": b, "task": task, "metric": metric, "family_size": k,
                 "learned": {c: LearnedShare.of(cells[c]).as_dict() for c in (a, b)}}
        if (a, b) in paired and paired[(a, b)].n > 1:
            entry.update(by_scores(paired[(a, b)], components, metric, margin, config, k))
            entry["p_improvement"] = list(probability_of_improvement(
                [s.value for s in scores[a].values()], [s.value for s in scores[b].values()],
                higher_is_better(metric), config.bootstrap_resamples, config.bootstrap_seed))
        else:
            entry.update(by_modes(LearnedShare.of(cells[a]), LearnedShare.of(cells[b]), config.alpha, k))
        found.append(entry)
    return found


def by_scores(pairs, components, metric: str, margin: float, config: ReportConfig, k: int) -> dict:
    decision = decide(pairs, components, margin, config.alpha, k, config.power)
    return {"kind": "scores", "scale": "log ratio" if metric != ACCURACY else "difference",
            "n_pairs": pairs.n, "draws": sorted({int(d) for d in pairs.draws}),
            "estimate": to_metric(decision.estimate, metric),
            "interval": [to_metric(decision.low, metric), to_metric(decision.high, metric)],
            "margin": [to_metric(-margin, metric), to_metric(margin, metric)],
            "se_runs": decision.se_runs, "se_images": decision.se_images,
            "p_adjusted": decision.p_adjusted, "tost_p_adjusted": decision.tost_p_adjusted,
            "verdict": decision.verdict, "runs_to_decide": decision.runs_to_decide,
            "why_no_runs": decision.why_no_runs,
            "components": {"draw": components.draw, "seed": components.seed, "residual": components.residual,
                           "df": components.df, "comparisons_pooled": components.comparisons,
                           "method": components.method}}


def by_modes(a: LearnedShare, b: LearnedShare, alpha: float, k: int) -> dict:
    """Whether the two cells' shares of learned runs differ (Fisher's exact test, Bonferroni)."""
    from scipy.stats import fisher_exact

    table = [[a.learned, a.trials - a.learned], [b.learned, b.trials - b.learned]]
    p = min(1.0, k * float(fisher_exact(table).pvalue))
    return {"kind": "modes", "estimate": a.learned / a.trials - b.learned / b.trials, "p_adjusted": p,
            "verdict": DIFFERS if p < alpha else UNDECIDED, "runs_to_decide": None, "why_no_runs": None}


def compare_all(root: Path, cells: dict[str, Cell], claim_pairs: list[tuple[str, str]],
                config: ReportConfig) -> list[dict]:
    return [entry for task in TASK_ORDER for entry in compare_task(
        root, task, {c: cell for c, cell in cells.items() if cell.task == task}, claim_pairs, config)]


# -- reading a comparison from one cell's side ------------------------------------------------

@dataclass(frozen=True)
class Advantage:
    """`cell` against `other`, positive when `cell` is better (whichever way the metric runs),
    on the analysis scale: accuracy as a share, MSE as log(ratio). Compared by modes, only
    which side learned more often, when that differs, is known."""
    kind: str  # "scores" or "modes"
    verdict: str
    low: float | None = None
    high: float | None = None
    margin: float | None = None
    modes_sign: int = 0  # by modes: +1 when `cell` learned more often, -1 when less

    @property
    def better(self) -> bool:
        if self.kind == "modes":
            return self.verdict == DIFFERS and self.modes_sign > 0
        return self.low > 0

    @property
    def worse(self) -> bool:
        if self.kind == "modes":
            return self.verdict == DIFFERS and self.modes_sign < 0
        return self.high < 0

    @property
    def equivalent(self) -> bool:
        return self.verdict in (EQUIVALENT, DIFFERS_WITHIN)

    @property
    def non_inferior(self) -> bool:
        """Not worse by the margin or more, shown (the interval's lower end above -margin)."""
        return self.better if self.kind == "modes" else self.low > -self.margin

    @property
    def beyond_margin(self) -> bool:
        """A difference larger than the margin, shown: the whole interval beyond ±margin."""
        if self.kind == "modes":
            return self.verdict == DIFFERS
        return self.low > self.margin or self.high < -self.margin


def find_comparison(comparisons: list[dict], cell: str, other: str) -> dict | None:
    return next((e for e in comparisons if {e["cell"], e["other"]} == {cell, other}), None)


def advantage(comparisons: list[dict], cell: str, other: str) -> Advantage | None:
    entry = find_comparison(comparisons, cell, other)
    if entry is None:
        return None
    flip = 1 if entry["cell"] == cell else -1
    if entry["kind"] == "modes":
        return Advantage("modes", entry["verdict"], modes_sign=int(np.sign(flip * entry["estimate"])))
    direction = 1 if entry["metric"] == ACCURACY else -1  # a lower MSE is better
    scale = (lambda v: v) if entry["metric"] == ACCURACY else np.log
    ends = sorted(float(flip * direction * scale(v)) for v in entry["interval"])
    return Advantage("scores", entry["verdict"], ends[0], ends[1], float(scale(entry["margin"][1])))
