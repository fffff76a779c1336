"""scripts/publish_study.sh publishes a study cell by cell, and a new session resumes it.

The full study is longer than a working session. The script pushes each cell's checkpoints to
the DVC remote and commits its results as the cell lands, so the next session (a fresh clone
with the same remote) restores what the commits hold and trains only the cells they lack.
"""
from __future__ import annotations

import shutil

import pytest
from conftest import (
    REPO,
    assert_pipeline_current,
    base_env,
    fresh_clone,
    make_project,
    run,
    small_params,
    stages_run,
    synthetic_mnist,
)

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

CELLS = ["regression-none-mse-zscore", "binary-logits-ce"]
PUBLISHED_SUBJECTS = ["Study: the report", "Study: binary-logits-ce", "Study: regression-none-mse-zscore",
                      "Study: the data stages and the train and evaluate inputs (code md5s, shared params)"]


def publish(project, env):
    return run(["bash", "scripts/publish_study.sh"], project, env)


def commit_subjects(project, env) -> list[str]:
    return run(["git", "log", "--format=%s"], project, env).stdout.splitlines()


def test_a_study_published_cell_by_cell_resumes_in_a_fresh_clone_training_only_what_no_commit_holds(tmp_path):
    manifest = synthetic_mnist(tmp_path / "mirror")
    env = base_env(MNIST_MIRROR=str(tmp_path / "mirror"), MNIST_MANIFEST=str(manifest))
    project = make_project(tmp_path / "project", small_params(CELLS, protocol__max_epochs=2))
    (project / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "publish_study.sh", project / "scripts")
    run(["dvc", "remote", "add", "-d", "home", str(tmp_path / "remote")], project, env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-q", "-m", "the publish script and a DVC remote"], project, env)

    first = publish(project, env)
    assert stages_run(first.stdout)[-5:] == [f"{stage}@{cell}" for cell in CELLS for stage in ("train", "evaluate")
                                             ] + ["report"], first.stdout
    assert commit_subjects(project, env)[:4] == PUBLISHED_SUBJECTS
    assert run(["git", "status", "--porcelain"], project, env).stdout == ""

    # The next session: a fresh clone whose last two commits never landed (the session ended
    # while the second cell trained).
    clone = fresh_clone(project, tmp_path / "clone", env)
    run(["git", "reset", "-q", "--hard", "HEAD~2"], clone, env)
    resumed = publish(clone, env)
    assert stages_run(resumed.stdout) == ["train@binary-logits-ce", "evaluate@binary-logits-ce", "report"], \
        resumed.stdout
    assert commit_subjects(clone, env)[:4] == PUBLISHED_SUBJECTS
    restored = "regression-none-mse-zscore"
    for path in (f"records/{restored}.json", f"models/{restored}/seed0.pt", "data/labels/train.npz"):
        assert (clone / path).read_bytes() == (project / path).read_bytes(), f"{path} was not restored as published"
    assert_pipeline_current(clone, env)

    # Run once more: every cell is published, so it passes over them without a DVC call.
    again = publish(clone, env)
    assert stages_run(again.stdout) == [], again.stdout
    assert [cell for cell in CELLS if f"{cell} already published" in again.stdout] == CELLS, again.stdout
    assert commit_subjects(clone, env)[:4] == PUBLISHED_SUBJECTS
