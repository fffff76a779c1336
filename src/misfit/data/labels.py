"""The targets of all five tasks, derived from the digit (label maps: STUDY.md, "Tasks")."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from misfit.core.files import atomic_dir, write_json_atomic, write_npz_atomic
from misfit.core.tasks import STROKES
from misfit.data.split import DRAWS_DIR, SPLITS

CURVED = frozenset({0, 3, 6, 8, 9})
EVEN = frozenset({0, 2, 4, 6, 8})
PRIME = frozenset({2, 3, 5, 7})
SQUARE = frozenset({0, 1, 4, 9})
MULTILABEL_GROUPS = (("even", EVEN), ("prime", PRIME), ("curved", CURVED), ("square", SQUARE))


def _member(digits: np.ndarray, group: frozenset) -> np.ndarray:
    return np.isin(digits, sorted(group))


def derive_targets(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Targets of every task for an array of digit labels."""
    digits = labels.astype(np.int64)
    if digits.size and (digits.min() < 0 or digits.max() > 9):
        raise ValueError(f"digit labels must lie in 0..9, got {digits.min()}..{digits.max()}")
    strokes = np.array([STROKES[d] for d in range(10)], dtype=np.float32)
    curved = _member(digits, CURVED)
    return {
        "regression": strokes[digits],
        "probability": curved.astype(np.float32),
        "binary": curved.astype(np.int64),
        "multiclass": digits,
        "multilabel": np.stack([_member(digits, g) for _, g in MULTILABEL_GROUPS], axis=1).astype(
            np.float32
        ),
    }


def target_summary(targets: dict[str, np.ndarray]) -> dict:
    """What a collapsed model would score: class shares, the majority share, the variance."""
    multiclass = targets["multiclass"]
    return {
        "regression": {"mean": float(targets["regression"].mean()),
                       "variance": float(targets["regression"].var())},
        "probability": {"positive_share": float(targets["probability"].mean())},
        "binary": {"class_counts": np.bincount(targets["binary"], minlength=2).tolist()},
        "multiclass": {"class_counts": np.bincount(multiclass, minlength=10).tolist()},
        "multilabel": {"positive_share_per_output": targets["multilabel"].mean(axis=0).tolist()},
        "n": int(len(multiclass)),
    }


def write_labels(split_dir: Path, labels_dir: Path, test_dir: Path, test_labels: Path, summary_path: Path) -> None:
    """Targets for the train and valid split of every draw (labels_dir, mirroring split_dir's
    layout) and for the test split (test_labels, apart: the train stage does not depend on
    it); the main draw's summary, test included (what constant answers score), at
    summary_path, each further draw's in its dir."""
    draws = [Path(".")] + sorted(p.relative_to(split_dir) for p in (split_dir / DRAWS_DIR).glob("subset-*"))
    summaries = {}
    with atomic_dir(labels_dir) as staging:
        for draw in draws:
            (staging / draw).mkdir(parents=True, exist_ok=True)
            summary = {}
            for split in SPLITS:
                targets = _targets_of(split_dir / draw / f"{split}.npz")
                np.savez(staging / draw / f"{split}.npz", **targets)
                summary[split] = target_summary(targets)
            summaries[draw] = summary
            if draw != Path("."):
                write_json_atomic(staging / draw / "summary.json", summary)
        test = _targets_of(test_dir / "test.npz")
        write_npz_atomic(test_labels, test)
        write_json_atomic(summary_path, {**summaries[Path(".")], "test": target_summary(test)})


def _targets_of(split_file: Path) -> dict[str, np.ndarray]:
    with np.load(split_file) as arrays:
        return derive_targets(arrays["labels"])
