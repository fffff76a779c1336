"""The seeds' claims (STUDY.md, "The seeds' claims"), each decided on every draw.

A claim is data: what the seed says, in its words, and a rule over cells. The rules:
- `best`: each of `cells` is at least as good as each of `others`: shown non-inferior by the
  margin (holds); one of `others` shown better (does not hold); else not decided.
- `better`: `cells[0]` is better than each of `others`: shown better than all (holds); one
  shown equivalent or better than it (does not hold); else not decided.
- `alike`: every two of `cells` perform alike: all shown equivalent within the margin
  (holds); a difference beyond the margin shown (does not hold); else not decided.
- `learns` / `never_learns`: every run / no run of each of `cells` learned.
The verdict's wording comes from the rule and the numbers, never from the cell.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

from misfit.core.study import RECOMMENDED, S0, S1, STUDIES, TASK_ORDER
from misfit.report.cells import Cell
from misfit.report.compare import Advantage, LearnedShare, advantage, find_comparison

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "not decided at this n"


@dataclass(frozen=True)
class Claim:
    claim_id: str
    source: str  # where the seed says it
    says: str  # the seed's claim, in English
    rule: str
    cells: tuple[str, ...]
    others: tuple[str, ...] = ()

    def pairs(self) -> list[tuple[str, str]]:
        if self.rule in ("best", "better"):
            return [(c, o) for c in self.cells for o in self.others]
        if self.rule == "alike":
            return list(combinations(self.cells, 2))
        return []


def _s0(task: str, *exclude: str) -> tuple[str, ...]:
    return tuple(c for c in STUDIES[S0] if c.startswith(f"{task}-") and c not in exclude)


FITTING = {  # seed 000's table (section 1): the loss that fits each task, as its cells
    "regression": ("regression-none-mse-zscore", "regression-none-rmse-zscore", "regression-none-mae-zscore"),
    "probability": ("probability-sigmoid-mse", "probability-sigmoid-rmse", "probability-sigmoid-mae"),
    "binary": ("binary-softmax-bce",),
    "multiclass": ("multiclass-softmax-ce",),
    "multilabel": ("multilabel-sigmoid-bce",),
}
FITTING_WORDS = {"regression": "MSE, RMSE or MAE", "probability": "the regression losses (\"the same as regression\")",
                 "binary": "BCE", "multiclass": "categorical cross-entropy", "multilabel": "BCE per class"}


def seed_claims() -> list[Claim]:
    claims = [Claim(f"S0-1-{task}", "seed 000 §1 (table)",
                    f"{task}: the fitting loss is {FITTING_WORDS[task]}; it does at least as well as the "
                    "task's other losses", "best", FITTING[task], _s0(task, *FITTING[task]))
              for task in TASK_ORDER]
    claims += [
        Claim("S0-1-1", "seed 000 §1-1", "multi-label: BCE is better than MSE (its penalty grows sharply as a "
              "prediction nears the opposite label)", "better", ("multilabel-sigmoid-bce",),
              ("multilabel-sigmoid-mse", "multilabel-softmax-mse")),
        Claim("S0-1-2", "seed 000 §1-2", "BCEWithLogitsLoss must not be fed outputs that already went through an "
              "activation: BCELoss on the same outputs does better", "better", ("binary-softmax-bce",),
              ("binary-softmax-bcelogits",)),
        Claim("S0-1-2-multiclass", "seed 000 §1-2", "the same, multi-class", "better", ("multiclass-softmax-bce",),
              ("multiclass-softmax-bcelogits",)),
        Claim("S0-3-1", "seed 000 §3-1", "binary: CE, BCE and MSE perform alike, \"within the error range\"",
              "alike", ("binary-softmax-ce", "binary-softmax-bce", "binary-softmax-mse")),
        Claim("S0-3-2-learn", "seed 000 §3-2", "multi-class: CE and softmax + MSE learn normally", "learns",
              ("multiclass-softmax-ce", "multiclass-softmax-mse")),
        Claim("S0-3-2-alike", "seed 000 §3-2", "multi-class: CE ≈ softmax + MSE", "alike",
              ("multiclass-softmax-ce", "multiclass-softmax-mse")),
        Claim("S0-3-2-sigmoid", "seed 000 §3-2", "multi-class: sigmoid + MSE does not learn at all", "never_learns",
              ("multiclass-sigmoid-mse",)),
    ]
    for study in (S0, S1):
        for task in TASK_ORDER:
            members = [c for c in STUDIES[study] if c.startswith(f"{task}-")]
            marked = tuple(c for c in members if c in RECOMMENDED[study])
            unmarked = tuple(c for c in members if c not in RECOMMENDED[study])
            if marked and unmarked:
                claims.append(Claim(f"{study}-marks-{task}", f"{'seed 000' if study == S0 else 'seed 001'} ✅ marks",
                                    f"{task}: each ✅ configuration is at least as good as each ❌ one",
                                    "best", marked, unmarked))
    return claims


def claim_pairs(claims: list[Claim]) -> list[tuple[str, str]]:
    return [pair for claim in claims for pair in claim.pairs()]


@dataclass
class Verdict:
    verdict: str
    reason: str
    deciding: list[dict] = field(default_factory=list)  # the comparisons the verdict rests on
    runs_to_decide: int | None = None
    why_no_runs: str | None = None


def decide_claim(claim: Claim, cells: dict[str, Cell], comparisons: list[dict]) -> dict:
    missing = [c for c in claim.cells + claim.others if c not in cells]
    if missing:
        verdict = Verdict(UNDECIDED, f"not trained here: {', '.join(missing)}")
    elif claim.rule in ("learns", "never_learns"):
        verdict = _learning(claim, cells)
    else:
        verdict = _pairwise(claim, comparisons)
    return {"claim": claim.claim_id, "source": claim.source, "says": claim.says, "rule": claim.rule,
            "cells": list(claim.cells), "others": list(claim.others), "verdict": verdict.verdict,
            "reason": verdict.reason, "deciding": verdict.deciding, "runs_to_decide": verdict.runs_to_decide,
            "why_no_runs": verdict.why_no_runs}


def _learning(claim: Claim, cells: dict[str, Cell]) -> Verdict:
    shares = {c: LearnedShare.of(cells[c]) for c in claim.cells}
    wanted = (lambda s: s.learned == s.trials) if claim.rule == "learns" else (lambda s: s.learned == 0)
    text = "; ".join(f"{c}: {s.learned}/{s.trials} {s.unit}s learned" for c, s in shares.items())
    return Verdict(HOLDS if all(wanted(s) for s in shares.values()) else FAILS, text)


def _pairwise(claim: Claim, comparisons: list[dict]) -> Verdict:
    judged = [(a, b, advantage(comparisons, a, b)) for a, b in claim.pairs()]
    entries = [find_comparison(comparisons, a, b) for a, b, _ in judged]
    if any(adv is None for _, _, adv in judged):
        return Verdict(UNDECIDED, "a comparison it needs was not made", entries)
    if claim.rule == "alike":
        failing = [(a, b) for a, b, adv in judged if adv.beyond_margin]
        passing = all(adv.equivalent for _, _, adv in judged)
        fail_text = "differ by more than the margin"
    elif claim.rule == "best":
        failing = [(b, a) for a, b, adv in judged if adv.worse]
        passing = all(adv.non_inferior for _, _, adv in judged)
        fail_text = "is shown better"
    else:  # better
        failing = [(b, a) for a, b, adv in judged if adv.worse or adv.equivalent]
        passing = all(adv.better for _, _, adv in judged)
        fail_text = "is shown equivalent or better"
    if failing:
        first = [find_comparison(comparisons, x, y) for x, y in failing]
        entries = first + [e for e in entries if e not in first]  # what decided it, first
        return Verdict(FAILS, "; ".join(f"{x} against {y}: {fail_text}" for x, y in failing), entries)
    if passing:
        return Verdict(HOLDS, "every comparison it needs shows it", entries)
    open_ = [(a, b, adv) for a, b, adv in judged if not _settled(claim.rule, adv)]
    first = [find_comparison(comparisons, a, b) for a, b, _ in open_]
    entries = first + [e for e in entries if e not in first]  # what is left to decide, first
    runs = [find_comparison(comparisons, a, b).get("runs_to_decide") for a, b, _ in open_]
    known = [r for r in runs if r is not None]
    whys = [find_comparison(comparisons, a, b).get("why_no_runs") for a, b, _ in open_]
    return Verdict(UNDECIDED, f"{len(open_)} of its {len(judged)} comparisons not decided: "
                   + ", ".join(f"{a} vs {b}" for a, b, _ in open_), entries,
                   max(known) if known and len(known) == len(runs) else None,
                   next((w for w in whys if w), None) if len(known) != len(runs) else None)


def _settled(rule: str, adv: Advantage) -> bool:
    return {"alike": adv.equivalent, "best": adv.non_inferior, "better": adv.better}[rule]
