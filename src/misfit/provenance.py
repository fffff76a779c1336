"""Where a number came from: code version, library versions, configuration digests."""
from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import yaml

from misfit.config import SAFE_LOADER
from misfit.files import sha256_json
from misfit.layout import PARAMS_FILE

VERSIONED = ("torch", "torchvision", "mlflow", "dvc", "numpy", "pydantic")


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# the pipeline rewrites these while it runs; they are outputs in git, not the code that ran
PIPELINE_OUTPUTS = (":(exclude)dvc.lock", ":(exclude)data/label_summary.json", ":(exclude)metrics",
                    ":(exclude)records", ":(exclude)reports")


def git_state(root: Path) -> dict[str, str]:
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *PIPELINE_OUTPUTS)
    return {
        "git_commit": commit or "unknown",
        "git_dirty": "unknown" if status is None else str(bool(status)).lower(),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def data_identity(split_manifest: dict, data_config: dict) -> dict:
    return {
        "dataset_sha256": split_manifest["dataset_sha256"],
        "splits": split_manifest["splits"],
        "config": data_config,
    }


def cell_digest(cell: dict, protocol: dict, data: dict) -> str:
    """Hash of everything that decides a cell's runs except the seed."""
    return sha256_json({"cell": cell, "protocol": protocol, "data": data})


def config_digest(cell: dict, protocol: dict, data: dict, seed: int) -> str:
    """Hash of everything that decides one run: equal configs, equal digests."""
    return sha256_json({"cell": cell, "protocol": protocol, "data": data, "seed": seed})


# the stage that lists what every train@<cell> shares: the train code (its deps) and the
# params all cells use (its params). Each train@<cell> depends on its one output
# (layout.TRAIN_INPUTS) instead of on ~20 files and ~40 lines of params: DVC rewrites the
# whole dvc.lock after each stage, so every line a train entry repeats costs 42 times.
TRAIN_INPUTS_STAGE = "train-inputs"


def train_code_files(root: Path) -> list[str]:
    """The files of the train stage's code, as dvc.yaml lists them."""
    return stage_file_deps(root, TRAIN_INPUTS_STAGE)


def train_inputs(root: Path) -> dict:
    """What the train-inputs stage writes: {"md5": {file: md5}, "params": {key: value}}."""
    spec = _stage_spec(root, TRAIN_INPUTS_STAGE)
    params = yaml.load((root / PARAMS_FILE).read_text(), Loader=SAFE_LOADER)  # noqa: S506
    return {"md5": md5_of_files(root, _file_deps(root, spec)),
            "params": {key: _param_value(params, key) for key in spec.get("params", [])}}


def _param_value(params: dict, dotted_key: str):
    value = params
    for part in dotted_key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"{PARAMS_FILE} has no {dotted_key!r} (dvc.yaml's {TRAIN_INPUTS_STAGE} stage lists it)")
        value = value[part]
    return value


def _stage_spec(root: Path, stage: str) -> dict:
    spec = yaml.load((root / "dvc.yaml").read_text(), Loader=SAFE_LOADER)["stages"][stage]  # noqa: S506
    return spec.get("do", spec)


def stage_file_deps(root: Path, stage: str) -> list[str]:
    """The file (not directory) dependencies dvc.yaml declares for a stage or foreach group."""
    return _file_deps(root, _stage_spec(root, stage))


def _file_deps(root: Path, spec: dict) -> list[str]:
    return [dep for dep in spec.get("deps", []) if "${" not in dep and (root / dep).is_file()]


def md5_of_files(root: Path, paths: list[str]) -> dict[str, str]:
    """md5 of each file, as dvc.lock writes it for a file dependency."""
    return {path: hashlib.md5((root / path).read_bytes()).hexdigest() for path in paths}
