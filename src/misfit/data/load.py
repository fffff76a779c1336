"""The splits as tensors, normalised, with one task's targets: a draw's train and valid
splits for training, the test split apart for evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from misfit.core.config import CellConfig, Params, ProtocolConfig
from misfit.core.errors import DataError
from misfit.core.layout import LABELS_DIR, SPLIT_DIR, TEST_DIR, TEST_LABELS
from misfit.data.split import draw_dir


def load_images(split_dir: Path, split: str, protocol: ProtocolConfig) -> torch.Tensor:
    """[n, 1, 28, 28] float32: pixels / 255, then (x - mean) / std."""
    with np.load(split_dir / f"{split}.npz") as arrays:
        pixels = torch.from_numpy(arrays["images"]).float().div_(255.0)
    return pixels.sub_(protocol.normalize_mean).div_(protocol.normalize_std).unsqueeze(1)


def load_targets(labels_dir: Path, split: str, task: str) -> torch.Tensor:
    with np.load(labels_dir / f"{split}.npz") as arrays:
        return torch.from_numpy(arrays[task])


@dataclass
class Split:
    x: torch.Tensor  # [n, 1, 28, 28] normalised images
    y: torch.Tensor  # task targets in the task's units


@dataclass
class CellData:
    """One draw's splits that training reads: no test image."""
    train: Split
    valid: Split


def load_cell_data(root: Path, params: Params, cell: CellConfig, device: torch.device,
                   subset_seed: int | None = None) -> CellData:
    """One draw's train and valid splits (the main draw unless subset_seed names a further one)."""
    main = params.data.subset_seed
    subset_seed = main if subset_seed is None else subset_seed
    split_dir = draw_dir(root / SPLIT_DIR, subset_seed, main)
    labels_dir = draw_dir(root / LABELS_DIR, subset_seed, main)
    if not (split_dir / "manifest.json").is_file():
        raise DataError(f"{split_dir}: no split of data.subset_seed {subset_seed}; "
                        "run the split and label-derive stages (dvc repro label-derive)")

    def split(name: str) -> Split:
        x = load_images(split_dir, name, params.protocol).to(device)
        return Split(x, load_targets(labels_dir, name, cell.task).to(device))

    return CellData(split("train"), split("valid"))


def load_test(root: Path, params: Params, cell: CellConfig, device: torch.device) -> Split:
    """The test split every draw shares (data/test, its targets data/test_labels.npz)."""
    if not (root / TEST_DIR / "test.npz").is_file() or not (root / TEST_LABELS).is_file():
        raise DataError(f"{root / TEST_DIR / 'test.npz'} or {root / TEST_LABELS}: missing; "
                        "run the split and label-derive stages (dvc repro label-derive)")
    x = load_images(root / TEST_DIR, "test", params.protocol).to(device)
    with np.load(root / TEST_LABELS) as arrays:
        y = torch.from_numpy(arrays[cell.task]).to(device)
    return Split(x, y)
