"""Scoring a saved checkpoint with the reference model, and the numbers of metrics/<cell>.json.

Every test score comes from a checkpoint file as saved (its SHA-256 checked against the
train record first), loaded into the reference `CNN` (not the training fast path); its
valid score is recomputed the same way and checked against what training recorded, so a
checkpoint that is not the model that was selected shows up as a mismatch.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from misfit.core.config import CellConfig
from misfit.core.errors import DataError
from misfit.core.files import sha256_file
from misfit.core.record import EvaluatedRun, TrainedRun
from misfit.data.load import Split
from misfit.train.model import CNN
from misfit.train.targets import CellTargets

# training and evaluation run the same arithmetic; allow for a different kernel choice
MATCH_TOLERANCE = 1e-6


@dataclass
class Scored:
    """A checkpoint's outputs on a split (activation applied) and its per-image scores."""
    outputs: torch.Tensor  # [n, outputs], in the space predictions are read from
    per_image: torch.Tensor  # [n]: squared error (regression) or share correct

    @property
    def score(self) -> float:
        return float(self.per_image.mean())


@torch.no_grad()
def score_split(model: CNN, targets: CellTargets, split: Split, chunk: int) -> Scored:
    outputs = torch.cat([model(split.x[i : i + chunk]) for i in range(0, len(split.x), chunk)])
    return Scored(targets.prediction_space(outputs), targets.per_sample_score(outputs, split.y))


def verified_checkpoint(path: Path, run: TrainedRun) -> Path:
    """The checkpoint file, if its content is what the train record says it is."""
    if not path.is_file():
        raise DataError(f"{path}: missing (the train record names it for draw {run.subset_seed} seed {run.seed}); "
                        "run `dvc pull` or `dvc repro` for its train stage")
    actual = sha256_file(path)
    if actual != run.checkpoint_sha256:
        raise DataError(f"{path}: SHA-256 {actual}, but the train record says {run.checkpoint_sha256}: "
                        "the checkpoint is not the one training saved (restore it with `dvc checkout`)")
    return path


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


def cell_metrics(trained: list[TrainedRun], evaluated: list[EvaluatedRun], main_subset_seed: int) -> dict:
    """metrics/<cell>.json: numbers only, over the main draw's runs that finished.

    Identities (run ids, digests) and errors are in the records; outcome modes and
    intervals are the report's, since a mean over runs in different modes is no one's value
    (the median here is a run's value, or between two).
    """
    scores = {(r.subset_seed, r.seed): r for r in evaluated}
    main = [r for r in trained if r.subset_seed == main_subset_seed]
    ok = [r for r in main if r.status == "ok"]
    tests = [scores[(r.subset_seed, r.seed)].test for r in ok if (r.subset_seed, r.seed) in scores]
    finite = [v for v in tests if math.isfinite(v)]
    return {
        "test": {**summarize(tests), **({"median": statistics.median(finite)} if finite else {})},
        "valid_best": summarize([r.valid_best for r in ok]),
        "best_epoch": {"median": statistics.median([r.best_epoch for r in ok])} if ok else {},
        "runs": len(main),
        "failed": len(main) - len(ok),
        "mismatches": sum(not r.matches_record for r in evaluated),
    }
