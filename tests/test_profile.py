"""`misfit profile NAME` (issue 22 item 4): a named profile runs as a DVC experiment in a
temporary copy, so the published study (tracked files, dvc.lock, DVC outputs) stays byte for
byte as it was, and its MLflow runs go to their own experiment."""
from __future__ import annotations

import csv
import io
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PUBLISHED_CELLS, REPO, copy_of, run, tracked_bytes

from misfit.run.profile import (
    EXP_SHOW_ARGS,
    Profile,
    ProfileError,
    apply_overrides,
    check_params,
    load_profile,
    set_args,
)


def test_smoke_profile_is_the_readme_overrides_and_valid():
    profile = load_profile(REPO, "smoke")
    check_params(REPO, profile, "misfit-smoke")  # raises on a typo or an invalid value
    assert set_args(profile, "misfit-smoke") == [
        "-S", "data.n_train=200", "-S", "data.n_valid=300", "-S", "data.n_test=1000",
        "-S", "protocol.max_epochs=2", "-S", "seeds=[0]", "-S", "draws.subset_seeds=[]",
        "-S", 'tracking.experiment="misfit-smoke"']


def test_a_bad_profile_stops_before_dvc(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "profiles" / "bad.yaml").write_text(yaml.safe_dump({"set": {"protocol.max_epochs": 0}}))
    with pytest.raises(ProfileError, match="protocol.max_epochs"):
        check_params(tmp_path, load_profile(tmp_path, "bad"), "misfit-bad")
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile(tmp_path, "missing")
    with pytest.raises(ProfileError, match="not in params.yaml"):
        apply_overrides({"cells": {}}, Profile("typo", "", {}, ("cells.x",)), "misfit-typo")


def runs_by_experiment(root: Path) -> dict[str, int]:
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        rows = db.execute("select e.name, count(r.run_uuid) from experiments e "
                          "left join runs r on r.experiment_id = e.experiment_id group by e.name").fetchall()
    return dict(rows)


@pytest.mark.slow
def test_profile_leaves_the_study_untouched_and_logs_apart(published, tmp_path):
    root, env = copy_of(published, tmp_path / "project")  # the study and its profiles/tiny.yaml
    before, study_runs = tracked_bytes(root), runs_by_experiment(root)["misfit"]

    done = run([sys.executable, "-m", "misfit.cli", "profile", "tiny"], root, env)

    assert run(["git", "status", "--porcelain"], root, env).stdout == ""
    assert tracked_bytes(root) == before
    runs = runs_by_experiment(root)
    assert runs["misfit"] == study_runs
    assert runs["misfit-tiny"] == 2 * len(PUBLISHED_CELLS)  # each cell's parent and its one run
    name = next(line.split("'")[1] for line in done.stdout.splitlines() if "DVC experiment" in line)
    assert name.startswith("tiny-") and "experiment 'misfit-tiny'" in done.stdout

    # the README's `dvc exp show`: a readable table that shows the profile's row
    table = run(["dvc", *EXP_SHOW_ARGS, "--csv"], root, env).stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    assert len(rows[0]) < 40, list(rows[0])
    assert any(row["Experiment"] == name and row["tracking.experiment"] == "misfit-tiny" for row in rows)

    # the way back: nothing to undo here; removing the experiment is one command
    run(["dvc", "exp", "remove", name], root, env)
    assert name not in run(["dvc", "exp", "list", "--name-only"], root, env).stdout
    assert run(["git", "status", "--porcelain"], root, env).stdout == ""
    assert tracked_bytes(root) == before
