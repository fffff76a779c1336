"""The five tasks by name: how many outputs, which metric. Imports nothing of ours, so
both the configuration (config.py) and the targets (tasks.py) can depend on it."""
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
