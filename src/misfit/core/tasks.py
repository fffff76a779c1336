"""The five tasks by name: how many outputs, which metric; and the regression target's
stroke table. Imports nothing of ours (nor torch), so the configuration (config.py), the
targets (tasks.py) and the report (findings.py) can all depend on it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    n_outputs: int
    metric: str  # "accuracy" or "mse"

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    @property
    def is_classification(self) -> bool:
        return self.name != "regression"


TASKS = {
    "regression": TaskSpec("regression", 1, "mse"),
    "probability": TaskSpec("probability", 1, "accuracy"),
    "binary": TaskSpec("binary", 2, "accuracy"),
    "multiclass": TaskSpec("multiclass", 10, "accuracy"),
    "multilabel": TaskSpec("multilabel", 4, "accuracy"),
}

# stroke count per digit (lines after cutting at bends and crossings, plus holes): the
# regression target
STROKES = {0: 2, 1: 1, 2: 2, 3: 2, 4: 6, 5: 3, 6: 3, 7: 2, 8: 4, 9: 3}
