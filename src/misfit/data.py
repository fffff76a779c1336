"""MNIST in, verified; the seeded 2,000/3,000 subset and the official test set out.

The identity of the data is the SHA-256 of each file's *uncompressed* bytes (the
official values below): the .gz wrappers may differ between copies.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from misfit.config import MNIST_TRAIN_SIZE, CellConfig, DataConfig, Params, ProtocolConfig
from misfit.errors import DataError
from misfit.files import atomic_dir, read_json, sha256_file, write_json_atomic
from misfit.layout import LABELS_DIR, SPLIT_DIR
from misfit.tasks import derive_targets

MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_SHAPES = {
    "train-images-idx3-ubyte": (60_000, 28, 28),
    "train-labels-idx1-ubyte": (60_000,),
    "t10k-images-idx3-ubyte": (10_000, 28, 28),
    "t10k-labels-idx1-ubyte": (10_000,),
}
MIRROR_ENV = "MNIST_MIRROR"
# tests point this at a JSON manifest ({file: {"sha256", "shape"}}) of synthetic IDX files;
# the data identity of every run then says so
MANIFEST_ENV = "MNIST_MANIFEST"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Manifest:
    sha256: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    source: str  # "official MNIST" or the custom manifest's path


def expected_manifest() -> Manifest:
    custom = os.environ.get(MANIFEST_ENV)
    if not custom:
        return Manifest(MNIST_SHA256, MNIST_SHAPES, "official MNIST")
    try:
        entries = read_json(Path(custom))
        return Manifest({name: entries[name]["sha256"] for name in MNIST_SHA256},
                        {name: tuple(entries[name]["shape"]) for name in MNIST_SHA256}, custom)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{MANIFEST_ENV}={custom}: not a manifest with sha256 and shape for each of "
                        f"{sorted(MNIST_SHA256)} ({error})") from None


def dataset_sha256(manifest: Manifest) -> str:
    """One digest for the whole data set: the SHA-256 of its sha256sum-style manifest."""
    lines = "".join(f"{manifest.sha256[name]}  {name}\n" for name in sorted(manifest.sha256))
    return hashlib.sha256(lines.encode()).hexdigest()


# -- download ------------------------------------------------------------------------

def fetch_raw(raw_dir: Path, mirror: Path | None) -> None:
    """Put the four verified, uncompressed IDX files in raw_dir, or leave it untouched."""
    manifest = expected_manifest()
    with atomic_dir(raw_dir) as staging:
        sources = copy_from_mirror(mirror, staging) if mirror is not None else download_with_torchvision(staging)
        for name, expected in manifest.sha256.items():
            check_idx_header(staging / name, manifest.shapes[name], sources[name])
            verify_sha256(staging / name, expected, sources[name])
        write_json_atomic(staging / "manifest.json", {
            "source": manifest.source, "dataset_sha256": dataset_sha256(manifest),
            "sha256": manifest.sha256, "shapes": manifest.shapes,
        })


def copy_from_mirror(mirror: Path, staging: Path) -> dict[str, str]:
    """Copy (or gunzip) the four files into staging; {file: where it came from, for errors}."""
    if not mirror.is_dir():
        raise DataError(f"{MIRROR_ENV}={mirror}: no such directory (expected one holding the "
                        f"four MNIST IDX files, .gz or uncompressed)")
    sources = {}
    for name in MNIST_SHA256:
        plain, packed = mirror / name, mirror / f"{name}.gz"
        if plain.is_file():
            shutil.copyfile(plain, staging / name)
            sources[name] = str(plain)
        elif packed.is_file():
            _gunzip(packed, staging / name)
            sources[name] = f"{packed} (uncompressed)"
        else:
            raise DataError(f"{mirror}: missing {name} (or {name}.gz)")
    return sources


def _gunzip(source: Path, target: Path) -> None:
    try:
        with gzip.open(source, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{source}: cannot decompress ({error}); the file is damaged or truncated") from None


def download_with_torchvision(staging: Path) -> dict[str, str]:
    from torchvision.datasets import MNIST  # slow import; only this stage downloads

    root = staging / "torchvision"
    try:
        for train in (True, False):
            MNIST(root=root, train=train, download=True)
    except RuntimeError as error:
        raise DataError(
            f"could not download MNIST with torchvision: {error}\n"
            f"Without internet access, set {MIRROR_ENV} to a directory holding the four "
            "IDX files (.gz or uncompressed)."
        ) from None
    for name in MNIST_SHA256:
        os.replace(root / "MNIST" / "raw" / name, staging / name)
    shutil.rmtree(root)
    return {name: f"{name} as downloaded by torchvision" for name in MNIST_SHA256}


def check_idx_header(path: Path, shape: tuple[int, ...], label: str | None = None) -> None:
    """Magic number (unsigned bytes, len(shape) dimensions), dimensions and size.

    `label` names the file in errors (the mirror's file rather than a staging copy).
    """
    where = label or str(path)
    magic = 0x0800 + len(shape)
    header_size = 4 * (1 + len(shape))
    with open(path, "rb") as handle:
        header = handle.read(header_size)
    if len(header) < 4 or struct.unpack(">I", header[:4])[0] != magic:
        found = f"{struct.unpack('>I', header[:4])[0]:#010x}" if len(header) >= 4 else "nothing"
        raise DataError(f"{where}: wrong magic number {found}, expected {magic:#010x} "
                        f"(IDX, unsigned bytes, {len(shape)} dimension(s))")
    dims = struct.unpack(f">{len(shape)}I", header[4:header_size])
    if dims != shape:
        raise DataError(f"{where}: IDX dimensions {dims}, expected {shape}")
    expected_size = header_size + int(np.prod(shape))
    if path.stat().st_size != expected_size:
        raise DataError(f"{where}: {path.stat().st_size} bytes, expected {expected_size} "
                        "(the file is truncated or has trailing data)")


def verify_sha256(path: Path, expected: str, label: str | None = None) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(f"{label or path}: SHA-256 of the uncompressed content is {actual}, "
                        f"expected {expected} (the file is not the official MNIST file)")


# -- split ---------------------------------------------------------------------------

def read_idx(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    check_idx_header(path, shape)
    return read_sn3_pascalvincent_tensor(str(path)).numpy()


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


def write_split(raw_dir: Path, split_dir: Path, config: DataConfig, further_seeds: list[int] = ()) -> None:
    """The main draw in split_dir, each further subset seed in its own draw_dir."""
    if not (raw_dir / "manifest.json").is_file():
        raise DataError(f"{raw_dir / 'manifest.json'}: missing; run the download stage first (dvc repro download)")
    raw = read_json(raw_dir / "manifest.json")
    arrays = {name: read_idx(raw_dir / name, tuple(shape)) for name, shape in raw["shapes"].items()}
    if config.n_test > len(arrays["t10k-labels-idx1-ubyte"]):
        raise DataError(f"data.n_test = {config.n_test} exceeds the "
                        f"{len(arrays['t10k-labels-idx1-ubyte'])} test images")
    with atomic_dir(split_dir) as staging:
        for subset_seed in (config.subset_seed, *further_seeds):
            target = draw_dir(staging, subset_seed, config.subset_seed)
            target.mkdir(parents=True, exist_ok=True)
            write_draw(arrays, raw, config.model_copy(update={"subset_seed": subset_seed}), target)


def write_draw(arrays: dict[str, np.ndarray], raw: dict, config: DataConfig, target: Path) -> None:
    train_images, train_labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    test_images, test_labels = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    train_idx, valid_idx = draw_subset(config, len(train_labels))
    test_idx = np.arange(config.n_test)
    parts = {
        "train": ("train", train_images, train_labels, train_idx),
        "valid": ("train", train_images, train_labels, valid_idx),
        "test": ("t10k", test_images, test_labels, test_idx),
    }
    manifest = {"dataset_sha256": raw["dataset_sha256"], "dataset_source": raw["source"],
                "raw_sha256": raw["sha256"], "subset_seed": config.subset_seed, "splits": {}}
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


# -- labels --------------------------------------------------------------------------

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


def write_labels(split_dir: Path, labels_dir: Path, summary_path: Path) -> None:
    """Targets for every split of every draw, mirroring split_dir's layout; the main draw's
    summary (what constant answers score) at summary_path, each further draw's in its dir."""
    draws = [Path(".")] + sorted(p.relative_to(split_dir) for p in (split_dir / DRAWS_DIR).glob("subset-*"))
    summaries = {}
    with atomic_dir(labels_dir) as staging:
        for draw in draws:
            (staging / draw).mkdir(parents=True, exist_ok=True)
            summary = {}
            for split in SPLITS:
                with np.load(split_dir / draw / f"{split}.npz") as arrays:
                    targets = derive_targets(arrays["labels"])
                np.savez(staging / draw / f"{split}.npz", **targets)
                summary[split] = target_summary(targets)
            summaries[draw] = summary
            if draw != Path("."):
                write_json_atomic(staging / draw / "summary.json", summary)
        write_json_atomic(summary_path, summaries[Path(".")])


# -- loading for training ------------------------------------------------------------

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
    train: Split
    valid: Split
    test: Split


def load_cell_data(root: Path, params: Params, cell: CellConfig, device: torch.device,
                   subset_seed: int | None = None) -> CellData:
    """One draw's three splits (the main draw unless subset_seed names a further one)."""
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

    return CellData(split("train"), split("valid"), split("test"))
