"""MNIST in, verified: the four IDX files, each checked against the SHA-256 of its
uncompressed content (the official values below: the .gz wrappers may differ between copies)."""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from misfit.core.errors import DataError
from misfit.core.files import atomic_dir, read_json, sha256_file, write_json_atomic

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
    except (RuntimeError, OSError) as error:
        # one line: torchvision's message lists every mirror it tried over several lines
        raise DataError(
            f"could not download MNIST with torchvision ({_last_line(error)}); data/raw is left "
            f"as it was. Without internet access, set {MIRROR_ENV} to a directory holding the "
            "four IDX files (.gz or uncompressed)."
        ) from None
    for name in MNIST_SHA256:
        os.replace(root / "MNIST" / "raw" / name, staging / name)
    shutil.rmtree(root)
    return {name: f"{name} as downloaded by torchvision" for name in MNIST_SHA256}


def _last_line(error: BaseException) -> str:
    """The last non-empty line of an error's message: the cause, for a multi-line one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


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


def read_idx(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    check_idx_header(path, shape)
    return read_sn3_pascalvincent_tensor(str(path)).numpy()
