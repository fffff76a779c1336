"""Scoring a saved checkpoint with the reference model, and the numbers of metrics/<cell>.json.

The test score of every run comes from its checkpoint file as saved, loaded into the
reference `CNN` (not the training fast path); its valid score is recomputed the same way
and checked against what training recorded, so a checkpoint that is not the model that
was selected shows up as a mismatch.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from misfit.config import CellConfig
from misfit.data import Split
from misfit.model import CNN
from misfit.tasks import CellTargets

# training and evaluation run the same arithmetic; allow for a different kernel choice
MATCH_TOLERANCE = 1e-6


@torch.no_grad()
def score_checkpoint(model: CNN, targets: CellTargets, split: Split, chunk: int) -> float:
    outputs = torch.cat([model(split.x[i : i + chunk]) for i in range(0, len(split.x), chunk)])
    return float(targets.per_sample_score(outputs, split.y).mean())


def load_reference(cell: CellConfig, checkpoint: Path, device: torch.device) -> CNN:
    model = CNN(cell.n_outputs, cell.model_activation).to(device)
    model.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    return model.to(memory_format=torch.channels_last).eval()


def agrees(recorded: float | None, recomputed: float) -> bool:
    if recorded is None:
        return False
    if not (math.isfinite(recorded) and math.isfinite(recomputed)):
        return str(recorded) == str(recomputed)
    return abs(recorded - recomputed) <= MATCH_TOLERANCE * max(1.0, abs(recorded))


def summarize(values: list[float | None]) -> dict:
    """mean, sample sd and n of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    summary: dict = {"n": len(finite)}
    if finite:
        summary["mean"] = statistics.fmean(finite)
    if len(finite) > 1:
        summary["sd"] = statistics.stdev(finite)
    return summary


def cell_metrics(runs: list[dict], main_subset_seed: int) -> dict:
    """metrics/<cell>.json: numbers only, over the main draw's runs that finished.

    Identities (run ids, digests) and errors are in records/<cell>.json; outcome modes and
    intervals are the report's, since a mean over runs in different modes is no one's value
    (the median here is a run's value, or between two).
    """
    main = [r for r in runs if r["subset_seed"] == main_subset_seed]
    ok = [r for r in main if r["status"] == "ok"]
    tests = [r["test"] for r in ok if r["test"] is not None and math.isfinite(r["test"])]
    return {
        "test": {**summarize([r["test"] for r in ok]), **({"median": statistics.median(tests)} if tests else {})},
        "valid_best": summarize([r["valid_best"] for r in ok]),
        "best_epoch": {"median": statistics.median([r["best_epoch"] for r in ok])} if ok else {},
        "runs": len(main),
        "failed": len(main) - len(ok),
        "mismatches": sum(r["evaluated"]["matches_record"] is False for r in runs),
    }
