"""A fresh clone is a home (issue 22): from `git clone` alone (no DVC cache, no MLflow store) a
user rebuilds the report without training, pulls every checkpoint from the project's DVC
remote, reproduces one run bit for bit, tries a profile beside the study and answers with a
logged model, and no step changes a tracked file.

The clone is of the session's `published` study (conftest): scripts/publish_study.sh pushed
its DVC outputs to the remote that its .dvc/config names, as the repository's names `study`.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil

import numpy as np
import pytest
from conftest import (
    PUBLISHED_CELLS,
    assert_pipeline_current,
    base_env,
    fresh_clone,
    run,
    stages_run,
    tracked_bytes,
)

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

CELL = PUBLISHED_CELLS[0]  # regression-none-mse-zscore: an MSE, a float bit-identity means something for
CACHED = ("data", "models", "predictions")  # what the remote holds, not git
# kept in git although under data/: the main draw's label summary, the train and evaluate inputs
IN_GIT = (".gitignore", "label_summary.json", "train_inputs.json", "evaluate_inputs.json")


def cached_digests(root, top: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / top).rglob("*")) if p.is_file() and p.name not in IN_GIT}


def in_git(root) -> dict[str, str]:
    """SHA-256 of every git-tracked file (tracked_bytes adds the DVC outputs present)."""
    tracked = set(run(["git", "ls-files", "-z"], root).stdout.split("\0"))
    return {name: digest for name, digest in tracked_bytes(root).items() if name in tracked}


def assert_git_clean(clone, env, before: dict[str, str], step: str) -> None:
    status = run(["git", "status", "--porcelain"], clone, env).stdout
    assert status == "", f"{step} left {status}"
    assert in_git(clone) == before, step


def test_a_fresh_clone_rebuilds_pulls_reproduces_profiles_and_predicts(published, tmp_path):
    project, env = published
    clone = fresh_clone(project, tmp_path / "clone", env)
    for top in CACHED:  # git alone does not bring them
        assert not cached_digests(clone, top), f"{top}/ came with git"
    before = in_git(clone)

    # 1. The README's rebuild: the per-image scores and the test labels, then the report stage
    # alone, byte for byte.
    # the file first: DVC 3.67 drops a file target that follows a stage group's name
    run(["dvc", "pull", "data/test_labels.npz", "evaluate"], clone, env)
    rebuilt = run(["dvc", "repro", "--force", "--single-item", "report"], clone, env)
    assert stages_run(rebuilt.stdout) == ["report"], rebuilt.stdout
    assert_git_clean(clone, env, before, "the report's rebuild")

    # 2. A plain `dvc repro` of the report trains nothing and deletes nothing: the first train
    # stage finds its runs in the committed record and says to pull them.
    plain = run(["dvc", "repro", "report"], clone, env, check=False)
    assert plain.returncode != 0, plain.stdout
    assert not [s for s in stages_run(plain.stdout) if s.startswith("train@")][1:], plain.stdout
    assert "already holds train@" in plain.stderr and "dvc pull train@" in plain.stderr, plain.stderr
    assert " epoch " not in plain.stdout, plain.stdout
    assert_git_clean(clone, env, before, "a plain dvc repro report")
    status = run(["dvc", "status"], clone, env).stdout
    assert "deleted:" in status and "models/" in status, status  # what is missing: the remote has it

    # 3. Every checkpoint and every data file from the remote; DVC then has nothing to do.
    run(["dvc", "pull"], clone, env)
    for top in CACHED:
        original = cached_digests(project, top)
        assert original and cached_digests(clone, top) == original, top
    assert_pipeline_current(clone, env)
    assert_git_clean(clone, env, before, "dvc pull")

    # 4. One run trained again, bit for bit, beside the committed numbers.
    record = json.loads((clone / "records" / f"{CELL}.json").read_text())
    seed1 = next(r for r in record["runs"] if (r["subset_seed"], r["seed"]) == (0, 1))
    again = run(["misfit", "reproduce", seed1["run_id"]], clone, env, timeout=600)
    assert "reproduced: every number equals the record's, bit for bit" in again.stdout, again.stdout
    assert_git_clean(clone, env, before, "misfit reproduce")

    # 5. A profile beside the study: its own DVC experiment and MLflow experiment.
    tried = run(["misfit", "profile", "tiny"], clone, env)
    assert "experiment 'misfit-tiny'" in tried.stdout, tried.stdout
    assert_git_clean(clone, env, before, "misfit profile tiny")

    # 6. The runs into a store of the clone's own, each checkpoint an MLflow Model; a cell's
    # registered best answers raw images, and its answers score what its record says.
    restored = run(["misfit", "restore-runs"], clone, env)
    assert "checkpoint(s) attached" in restored.stdout, restored.stdout
    images = clone / "data" / "test" / "test.npz"
    answers = np.array(json.loads(run(["misfit", "predict", CELL, str(images), "--json"], clone, env).stdout))
    truth = np.load(clone / "data" / "test_labels.npz")["regression"]
    evaluation = json.loads((clone / "evaluations" / f"{CELL}.json").read_text())
    main = [r for r in evaluation["runs"] if r["subset_seed"] == 0]
    best = min(main, key=lambda r: (r["valid"], r["seed"]))  # lower valid MSE: the registry's best
    assert math.isclose(float(np.mean((answers - truth) ** 2)), best["test"], rel_tol=1e-6)
    assert_git_clean(clone, env, before, "misfit restore-runs and predict")


def test_a_clone_elsewhere_points_the_remote_with_one_local_setting(published, tmp_path):
    project, env = published
    clone = fresh_clone(project, tmp_path / "clone", env)
    moved = tmp_path / "moved-remote"
    assert run(["dvc", "remote", "default"], clone, env).stdout.strip() == "home"
    url = run(["dvc", "config", "remote.home.url"], clone, env).stdout.strip()
    shutil.copytree(url, moved)
    run(["dvc", "remote", "modify", "--local", "home", "url", str(moved)], clone, env)
    # `dvc remote list` shortens a long url: ask for the value itself
    assert run(["dvc", "config", "remote.home.url"], clone, env).stdout.strip() == str(moved)
    run(["dvc", "pull", f"train@{CELL}"], clone, base_env())
    assert (clone / "models" / CELL / "seed0.pt").read_bytes() == (project / "models" / CELL / "seed0.pt").read_bytes()
    assert run(["git", "status", "--porcelain"], clone, env).stdout == ""
