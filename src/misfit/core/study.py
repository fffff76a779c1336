"""The two source studies (STUDY.md, "Cells"): which cell belongs where, what is
recommended, and the numbers seed 000 published. This is the spec, not a knob."""
from __future__ import annotations

S0, S1, ADDED = "S0", "S1", "added"

STUDY_TITLES = {
    S0: "S0: loss functions (seed 000)",
    S1: "S1: final activations (seed 001)",
    ADDED: "Added: the loss on raw logits (the correct idiom)",
}
TASK_ORDER = ("regression", "probability", "binary", "multiclass", "multilabel")


def _expand(*patterns: str) -> list[str]:
    cells = []
    for pattern in patterns:
        parts = [p.strip("{}").split(",") for p in pattern.split("-")]
        stack = [""]
        for options in parts:
            stack = [f"{prefix}-{o}" if prefix else o for prefix in stack for o in options]
        cells.extend(stack)
    return cells


_CLASSIFIER_S0 = ("softmax-ce", "softmax-bce", "sigmoid-bce", "softmax-bcelogits", "softmax-mse", "sigmoid-mse")
_CLASSIFIER_S1 = ("softmax-ce", "sigmoid-bce", "sigmoid-ce")

STUDIES: dict[str, list[str]] = {
    S0: _expand("regression-none-{mse,mae,rmse,bce,bcelogits}-zscore", "probability-sigmoid-bce",
                "probability-{none,sigmoid}-{mse,mae,rmse}", "probability-softmax-ce")
    + [f"{task}-{rest}" for task in ("binary", "multiclass") for rest in _CLASSIFIER_S0]
    + _expand("multilabel-sigmoid-bce", "multilabel-softmax-mse", "multilabel-sigmoid-mse",
              "multilabel-softmax-ce"),
    S1: _expand("regression-none-mse-zscore", "regression-none-mse-raw", "regression-relu-mse-{raw,zscore}",
                "regression-sigmoid-mse-{raw,zscore}", "probability-sigmoid-bce",
                "probability-softmax-{ce,bce}")
    + [f"{task}-{rest}" for task in ("binary", "multiclass") for rest in _CLASSIFIER_S1]
    + ["multilabel-sigmoid-bce", "multilabel-softmax-bce"],
    ADDED: ["probability-logits-bcelogits", "binary-logits-ce", "multiclass-logits-ce",
            "multilabel-logits-bcelogits"],
}

# the configuration each seed marks with a check mark, per study
RECOMMENDED: dict[str, set[str]] = {
    S0: {"regression-none-mse-zscore", "regression-none-mae-zscore", "regression-none-rmse-zscore",
         "probability-sigmoid-bce", "binary-softmax-ce", "multiclass-softmax-ce", "multilabel-sigmoid-bce"},
    S1: {"regression-none-mse-zscore", "regression-none-mse-raw", "regression-relu-mse-raw",
         "regression-relu-mse-zscore", "probability-sigmoid-bce", "binary-softmax-ce",
         "multiclass-softmax-ce", "multilabel-sigmoid-bce"},
    ADDED: set(STUDIES[ADDED]),
}

# seed 000, section 3: (valid best, test) accuracy in percent, single runs
PUBLISHED = {
    "binary-softmax-bce": (96.60, 97.28),
    "binary-softmax-mse": (97.33, 97.85),
    "binary-sigmoid-mse": (96.93, 97.67),
    "multiclass-softmax-ce": (97.07, 97.57),
    "multiclass-softmax-mse": (96.87, 97.30),
    "multiclass-sigmoid-mse": (10.97, 10.28),
}


def studies_of(cell_id: str) -> list[str]:
    return [study for study, cells in STUDIES.items() if cell_id in cells]


def recommended_in(cell_id: str, study: str) -> bool:
    return cell_id in RECOMMENDED[study]
