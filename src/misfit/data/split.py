"""The seeded 2,000/3,000 subset of the training images and the official test set, per draw."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import torch

from misfit.core.config import MNIST_TRAIN_SIZE, DataConfig
from misfit.core.errors import DataError
from misfit.core.files import atomic_dir, read_json, write_json_atomic
from misfit.data.mnist import read_idx

SPLITS = ("train", "valid")  # each draw's; the test split is apart (write_split)


def draw_subset(config: DataConfig, n_images: int = MNIST_TRAIN_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the training images: (train, valid), drawn with the seeded RNG."""
    if config.n_train + config.n_valid > n_images:
        raise DataError(f"data.n_train + data.n_valid = {config.n_train + config.n_valid} exceeds the "
                        f"{n_images} training images")
    generator = torch.Generator().manual_seed(config.subset_seed)
    chosen = torch.randperm(n_images, generator=generator)[: config.n_train + config.n_valid]
    chosen = chosen.numpy()
    return chosen[: config.n_train], chosen[config.n_train :]


def split_digest(images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in (images, labels, indices):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


DRAWS_DIR = "draws"  # data/split/draws/subset-<k>/: a further draw, laid out like data/split


def draw_dir(split_dir: Path, subset_seed: int, main_seed: int) -> Path:
    """Where the draw with this data.subset_seed lives: split_dir itself for the main one."""
    return split_dir if subset_seed == main_seed else split_dir / DRAWS_DIR / f"subset-{subset_seed}"


def write_split(raw_dir: Path, split_dir: Path, test_dir: Path, config: DataConfig,
                further_seeds: list[int] = ()) -> None:
    """Each draw's train and valid images (the main draw in split_dir, each further subset
    seed in its own draw_dir) and, apart in test_dir, the test images all draws share:
    the train stage depends on split_dir alone, so it cannot read a test image."""
    if not (raw_dir / "manifest.json").is_file():
        raise DataError(f"{raw_dir / 'manifest.json'}: missing; run the download stage first (dvc repro download)")
    raw = read_json(raw_dir / "manifest.json")
    arrays = {name: read_idx(raw_dir / name, tuple(shape)) for name, shape in raw["shapes"].items()}
    if config.n_test > len(arrays["t10k-labels-idx1-ubyte"]):
        raise DataError(f"data.n_test = {config.n_test} exceeds the "
                        f"{len(arrays['t10k-labels-idx1-ubyte'])} test images")
    with atomic_dir(split_dir) as staging, atomic_dir(test_dir) as test_staging:
        test_idx = np.arange(config.n_test)
        write_parts({"test": ("t10k", *_images_and_labels(arrays, "t10k"), test_idx)}, raw, None, test_staging)
        for subset_seed in (config.subset_seed, *further_seeds):
            target = draw_dir(staging, subset_seed, config.subset_seed)
            target.mkdir(parents=True, exist_ok=True)
            train_idx, valid_idx = draw_subset(config.model_copy(update={"subset_seed": subset_seed}),
                                               len(arrays["train-labels-idx1-ubyte"]))
            images, labels = _images_and_labels(arrays, "train")
            write_parts({"train": ("train", images, labels, train_idx), "valid": ("train", images, labels, valid_idx)},
                        raw, subset_seed, target)


def _images_and_labels(arrays: dict[str, np.ndarray], source: str) -> tuple[np.ndarray, np.ndarray]:
    return arrays[f"{source}-images-idx3-ubyte"], arrays[f"{source}-labels-idx1-ubyte"]


def write_parts(parts: dict[str, tuple], raw: dict, subset_seed: int | None, target: Path) -> None:
    """Each split's images, labels and indices (<split>.npz), which image went where
    (indices.csv) and the SHA-256 of each split (manifest.json)."""
    manifest = {"dataset_sha256": raw["dataset_sha256"], "dataset_source": raw["source"],
                "raw_sha256": raw["sha256"], "subset_seed": subset_seed, "splits": {}}
    with open(target / "indices.csv", "w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["split", "source_file", "index", "label"])
        for split, (source, images, labels, idx) in parts.items():
            np.savez(target / f"{split}.npz", images=images[idx], labels=labels[idx], indices=idx)
            writer.writerows((split, f"{source}-images-idx3-ubyte", int(i), int(labels[i])) for i in idx)
            manifest["splits"][split] = {
                "n": int(len(idx)),
                "sha256": split_digest(images[idx], labels[idx], idx),
                "indices_sha256": hashlib.sha256(idx.astype(np.int64).tobytes()).hexdigest(),
            }
    write_json_atomic(target / "manifest.json", manifest)


def read_split_manifest(split_dir: Path) -> dict:
    return read_json(split_dir / "manifest.json")
