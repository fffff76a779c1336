"""Where a number came from: code version, library versions, configuration digests."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import yaml

from misfit.core.config import SAFE_LOADER
from misfit.core.errors import DataError
from misfit.core.files import sha256_json
from misfit.core.layout import EVALUATE_INPUTS, PARAMS_FILE, TRAIN_INPUTS

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


# The stages that list what every train@<cell> (or evaluate@<cell>) shares: that stage's code
# (their deps) and the params all cells use (their params). Each train@<cell> depends on
# the one file train-inputs writes (layout.TRAIN_INPUTS) instead of on its code files and
# ~40 lines of params: DVC rewrites the whole dvc.lock after each stage, so every line an
# entry repeats costs 42 times.
INPUTS_FILES = {"train": TRAIN_INPUTS, "evaluate": EVALUATE_INPUTS}
TRAIN_INPUTS_STAGE = "train-inputs"


def inputs_stage(stage: str) -> str:
    return f"{stage}-inputs"


def train_code_files(root: Path) -> list[str]:
    """The files of the train stage's code, as dvc.yaml lists them."""
    return stage_file_deps(root, TRAIN_INPUTS_STAGE)


def stage_inputs(root: Path, stage: str) -> dict:
    """What the <stage>-inputs stage writes: {"md5": {file: md5}, "params": {key: value}}."""
    name = inputs_stage(stage)
    spec = _stage_spec(root, name)
    params = yaml.load((root / PARAMS_FILE).read_text(), Loader=SAFE_LOADER)  # noqa: S506
    return {"md5": md5_of_files(root, _file_deps(root, spec)),
            "params": {key: _param_value(params, key, name) for key in spec.get("params", [])}}


def check_stage_inputs(root: Path, stage: str) -> dict:
    """data/<stage>_inputs.json (what dvc.lock pins for the code and the shared params of the
    stage) lists the code and params that run; returns them.

    It can lag only if the <stage>-inputs stage was skipped (`dvc repro --single-item`); the
    stage would then be pinned to code or params other than its own.
    """
    path, name = INPUTS_FILES[stage], inputs_stage(stage)
    try:
        listed = json.loads((root / path).read_text())
        listed_md5, listed_params = listed["md5"], listed["params"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: cannot read the {stage} code's md5s and the shared params ({error}); "
                        f"run `dvc repro {name}`") from None
    current = stage_inputs(root, stage)
    changed = ([p for p, md5 in current["md5"].items() if listed_md5.get(p) != md5]
               + [p for p in listed_md5 if p not in current["md5"]]
               + [f"params {key}" for key, value in current["params"].items()
                  if key not in listed_params or listed_params[key] != value])
    if changed:
        raise DataError(f"{path} does not list the code and params that would run ({', '.join(changed)} "
                        f"changed since it was written); run `dvc repro {name}` "
                        "(or `dvc repro` without --single-item)")
    return current


def _param_value(params: dict, dotted_key: str, stage: str):
    value = params
    for part in dotted_key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"{PARAMS_FILE} has no {dotted_key!r} (dvc.yaml's {stage} stage lists it)")
        value = value[part]
    return value


def _stage_spec(root: Path, stage: str) -> dict:
    spec = yaml.load((root / "dvc.yaml").read_text(), Loader=SAFE_LOADER)["stages"][stage]  # noqa: S506
    return spec.get("do", spec)


def stage_file_deps(root: Path, stage: str) -> list[str]:
    """The code files dvc.yaml declares for a stage or foreach group: each file dep, and each
    .py file under a dep that is a folder of src/ (a package)."""
    return _file_deps(root, _stage_spec(root, stage))


def _file_deps(root: Path, spec: dict) -> list[str]:
    files = []
    for dep in spec.get("deps", []):
        if "${" in dep:
            continue
        if (root / dep).is_file():
            files.append(dep)
        elif dep.startswith("src/") and (root / dep).is_dir():
            files += sorted(str(path.relative_to(root)) for path in (root / dep).rglob("*.py")
                            if "__pycache__" not in path.parts)
    return files


def md5_of_files(root: Path, paths: list[str]) -> dict[str, str]:
    """md5 of each file, as dvc.lock writes it for a file dependency."""
    return {path: hashlib.md5((root / path).read_bytes()).hexdigest() for path in paths}
