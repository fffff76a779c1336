"""Writing outputs so that a failure leaves nothing half-written behind."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty staging directory that replaces `final` only if the block succeeds."""
    created_parent = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; outputs are ordinary dirs
    try:
        yield staging
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created_parent and not any(final.parent.iterdir()):
            final.parent.rmdir()


def _remove_stale_staging(final: Path) -> None:
    """Staging dirs of `final` that a process killed outright (SIGKILL, the OOM killer) left.

    Only one process at a time writes an output (DVC locks it for its stage), so any
    staging dir of it that exists now is stale. mkdtemp's suffix is 8 characters: the
    staging dirs of a sibling such as `<name>.json` do not match.
    """
    for stale in final.parent.glob(f".{glob.escape(final.name)}.{'?' * 8}"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_npz_atomic(path: Path, arrays: dict, compressed: bool = False) -> None:
    """numpy's .npz of `arrays`, replacing `path` only once it is whole."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            (np.savez_compressed if compressed else np.savez)(handle, **arrays)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def json_safe(value):
    """JSON has no inf or nan: write them as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def drop_none(value):
    """Leave out null fields: `dvc metrics show` cannot parse them."""
    if isinstance(value, dict):
        return {key: drop_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [drop_none(item) for item in value]
    return value


def json_float(value) -> float | None:
    """Read back a float written by json_safe."""
    return None if value is None else float(value)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(data) -> str:
    """Digest of a JSON-able value, independent of key order."""
    text = json.dumps(json_safe(data), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()
