"""The evaluate stage of one cell: every seed's saved checkpoint, scored again.

It loads each best checkpoint into the reference `CNN` (not the training fast path),
scores it on valid and test, checks that against what training recorded, and writes
metrics/<cell>.json, a DVC metrics file naming the MLflow runs behind each number.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from misfit.config import load_params
from misfit.data import load_cell_data
from misfit.files import drop_none, read_json, write_json_atomic
from misfit.layout import METRICS_DIR, MODELS_DIR, PARAMS_FILE
from misfit.model import CNN
from misfit.runtime import configure
from misfit.tasks import CellTargets

# training and evaluation run the same arithmetic; allow for a different kernel choice
MATCH_TOLERANCE = 1e-6


def summarize(values: list[float]) -> dict:
    """mean, sample std and n over seeds (std needs two values)."""
    finite = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(finite) if finite else None,
        "std": statistics.stdev(finite) if len(finite) > 1 else None,
        "n": len(finite),
    }


def describe_failures(errors: dict[str, str]) -> str | None:
    """One line for the failed seeds, each distinct error once: "seeds 0, 2: ...; seed 1: ..."."""
    by_error: dict[str, list[str]] = {}
    for seed, error in errors.items():
        by_error.setdefault(error, []).append(seed)
    parts = [f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}: {error}" for error, seeds in by_error.items()]
    return "; ".join(parts) or None


@torch.no_grad()
def score_checkpoint(model: CNN, targets: CellTargets, x: torch.Tensor, y: torch.Tensor, chunk: int) -> float:
    outputs = torch.cat([model(x[i : i + chunk]) for i in range(0, len(x), chunk)])
    return float(targets.per_sample_score(outputs, y).mean())


def _agrees(recorded: float | None, recomputed: float) -> bool:
    if recorded is None:
        return False
    if not (math.isfinite(recorded) and math.isfinite(recomputed)):
        return str(recorded) == str(recomputed)
    return abs(recorded - recomputed) <= MATCH_TOLERANCE * max(1.0, abs(recorded))


def evaluate_cell(cell_id: str, root: Path = Path(".")) -> Path:
    params = load_params(root / PARAMS_FILE)
    cell = params.cell(cell_id)
    device = configure(params.protocol)
    record = read_json(root / MODELS_DIR / cell_id / "record.json")
    if record["cell"] != cell.model_dump():
        raise RuntimeError(f"{MODELS_DIR / cell_id}/record.json was trained for {record['cell']}, "
                           f"but params.yaml now says {cell.model_dump()}: rerun train@{cell_id}")
    data = load_cell_data(root, params, cell, device)
    targets = CellTargets(cell, data.train.y)
    chunk = params.protocol.eval_batch_size
    seeds = {}
    for run in record["runs"]:
        entry = {key: run[key] for key in ("run_id", "config_digest", "status", "error", "best_epoch",
                                           "epochs_run")}
        entry.update(valid_best=None, test=None, matches_record=None,
                     recorded_valid_best=run["valid_best"], recorded_test=run["test"])
        if run["checkpoint"]:
            model = CNN(cell.n_outputs, cell.model_activation).to(device)
            model.load_state_dict(torch.load(root / MODELS_DIR / cell_id / run["checkpoint"],
                                             map_location=device, weights_only=True))
            model = model.to(memory_format=torch.channels_last).eval()
            valid = score_checkpoint(model, targets, data.valid.x, data.valid.y, chunk)
            test = score_checkpoint(model, targets, data.test.x, data.test.y, chunk)
            entry.update(valid_best=valid, test=test,
                         matches_record=_agrees(run["valid_best"], valid)
                         and (run["status"] != "ok" or _agrees(run["test"], test)))
        seeds[str(run["seed"])] = entry
    ok = [s for s in seeds.values() if s["status"] == "ok"]
    failed = {seed: s["error"] for seed, s in seeds.items() if s["status"] != "ok"}
    metrics = {
        "cell": cell_id, "task": cell.task, "metric": record["metric"],
        "status": "failed" if failed else "ok",
        "error": describe_failures(failed),
        "parent_run_id": record["parent_run_id"], "cell_digest": record["cell_digest"],
        "valid_best": summarize([s["valid_best"] for s in ok]),
        "test": summarize([s["test"] for s in ok]),
        "best_epoch": summarize([s["best_epoch"] for s in ok]),
        "all_match_record": all(s["matches_record"] is not False for s in seeds.values()),
        "seeds": seeds,
    }
    path = root / METRICS_DIR / f"{cell_id}.json"
    write_json_atomic(path, drop_none(metrics))
    print(f"{cell_id}: {metrics['status']}, test {metrics['test']}, valid best {metrics['valid_best']}")
    return path

