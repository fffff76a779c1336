"""scripts/publish_study.sh publishes a study cell by cell, and a new session resumes it.

The full study is longer than a working session. The script pushes each cell's checkpoints to
the DVC remote and commits its results as the cell lands, so the next session (a fresh clone
with the same remote) restores what the commits hold and trains only the cells they lack.
The session's `published` study (conftest) is the first session: the script published it.
"""
from __future__ import annotations

import pytest
from conftest import (
    PUBLISHED_CELLS,
    assert_pipeline_current,
    fresh_clone,
    publish_output,
    run,
    stages_run,
)

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

DATA_SUBJECT = "Study: the data stages and the train and evaluate inputs (code md5s, shared params)"
PUBLISHED_SUBJECTS = ["Study: the report", *[f"Study: {cell}" for cell in reversed(PUBLISHED_CELLS)], DATA_SUBJECT]
LAST, RESTORED = PUBLISHED_CELLS[-1], PUBLISHED_CELLS[0]


def publish(project, env):
    return run(["bash", "scripts/publish_study.sh"], project, env)


def commit_subjects(project, env) -> list[str]:
    return run(["git", "log", "--format=%s"], project, env).stdout.splitlines()


def test_the_script_publishes_each_cell_as_it_lands_then_the_report(published):
    project, env = published
    assert stages_run(publish_output(published))[-(2 * len(PUBLISHED_CELLS) + 1):] == [
        f"{stage}@{cell}" for cell in PUBLISHED_CELLS for stage in ("train", "evaluate")] + ["report"]
    assert commit_subjects(project, env)[:len(PUBLISHED_SUBJECTS)] == PUBLISHED_SUBJECTS
    assert run(["git", "status", "--porcelain"], project, env).stdout == ""
    cloud = run(["dvc", "status", "--cloud"], project, env)
    assert "Cache and remote 'home' are in sync." in cloud.stdout, cloud.stdout


def test_a_fresh_clone_resumes_training_only_what_no_commit_holds(published, tmp_path):
    project, env = published
    # The next session: a fresh clone whose last two commits never landed (the session ended
    # while the last cell trained).
    clone = fresh_clone(project, tmp_path / "clone", env)
    run(["git", "reset", "-q", "--hard", "HEAD~2"], clone, env)
    resumed = publish(clone, env)
    assert stages_run(resumed.stdout) == [f"train@{LAST}", f"evaluate@{LAST}", "report"], resumed.stdout
    assert commit_subjects(clone, env)[:len(PUBLISHED_SUBJECTS)] == PUBLISHED_SUBJECTS
    for path in (f"records/{RESTORED}.json", f"models/{RESTORED}/seed0.pt", "data/labels/train.npz"):
        assert (clone / path).read_bytes() == (project / path).read_bytes(), f"{path} differs from the published"
    assert_pipeline_current(clone, env)

    # Run once more: every cell is published, so it passes over them without a DVC call.
    again = publish(clone, env)
    assert stages_run(again.stdout) == [], again.stdout
    assert [cell for cell in PUBLISHED_CELLS if f"{cell} already published" in again.stdout] == PUBLISHED_CELLS
    assert commit_subjects(clone, env)[:len(PUBLISHED_SUBJECTS)] == PUBLISHED_SUBJECTS
