"""The smoke profile's overrides (profiles/smoke.yaml, what `misfit profile smoke` runs) on the
real MNIST copy, end to end, in a project of its own (`dvc exp run` in its workspace)."""
from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_MNIST, base_env, make_project, run

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

# one cell per task and the study's interesting failures; the smoke profile keeps them all
CELLS = ["regression-none-mse-zscore", "regression-none-bce-zscore", "regression-sigmoid-mse-zscore",
         "probability-softmax-ce", "binary-softmax-ce", "multiclass-softmax-mse",
         "multilabel-logits-bcelogits"]


def smoke_overrides() -> list[str]:
    """The smoke profile's `-S` overrides, as `misfit profile smoke` passes them (so the profile stays true)."""
    from misfit.run.profile import load_profile, set_args

    profile = load_profile(REPO, "smoke")
    args = set_args(profile, "misfit-smoke")
    return [args[i + 1] for i, word in enumerate(args) if word == "-S"]


def mnist_mirror() -> str:
    configured = os.environ.get("MNIST_MIRROR")
    return str((REPO / configured).resolve()) if configured else str(SHARED_MNIST)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("mnist") / "project")
    all_cells = yaml.safe_load((project / "params.yaml").read_text())["cells"]
    drop = [f"~cells.{cell}" for cell in all_cells if cell not in CELLS]
    args = [arg for override in smoke_overrides() + drop for arg in ("-S", override)]
    env = base_env(MNIST_MIRROR=mnist_mirror())
    first = run(["dvc", "exp", "run", *args], project, env)
    return project, env, first


def test_smoke_profile_is_small(smoke):
    project, _, _ = smoke
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert sorted(params["cells"]) == sorted(CELLS)
    assert params["data"]["n_train"] <= 500 and params["protocol"]["max_epochs"] <= 3
    manifest = json.loads((project / "data" / "split" / "manifest.json").read_text())
    assert manifest["dataset_source"] == "official MNIST"


def test_mlflow_holds_one_run_per_cell_and_seed(smoke):
    project, _, _ = smoke
    params = yaml.safe_load((project / "params.yaml").read_text())
    seeds = params["seeds"]
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        children = db.execute(
            "select r.run_uuid, c.value, s.value, r.artifact_uri from runs r "
            "join tags c on c.run_uuid = r.run_uuid and c.key = 'cell' "
            "join tags s on s.run_uuid = r.run_uuid and s.key = 'seed'").fetchall()
        assert sorted((cell, int(seed)) for _, cell, seed, _ in children) == sorted(
            (cell, seed) for cell in CELLS for seed in seeds)
        for run_id, cell, _, artifact_uri in children:
            params_logged = dict(db.execute("select key, value from params where run_uuid = ?", (run_id,)))
            assert params_logged["cell.task"] == cell.split("-")[0]
            assert params_logged["protocol.lr"] == "0.001" and "seed" in params_logged
            steps = db.execute("select count(distinct step) from metrics where run_uuid = ? and key = "
                               "'train_loss'", (run_id,)).fetchone()[0]
            if cell != "regression-none-bce-zscore":  # fails at its first batch
                assert steps == params["protocol"]["max_epochs"]
            summary = Path(artifact_uri.removeprefix("file://")) / "model_summary.txt"
            assert "Conv2d" in summary.read_text() and "Total params" in summary.read_text()


def test_report_covers_every_cell(smoke):
    project, _, _ = smoke
    results = json.loads((project / "reports" / "results.json").read_text())["cells"]
    assert sorted(results) == sorted(CELLS)
    assert list(results["regression-none-bce-zscore"]["modes"]) == ["failed"]
    assert list(results["probability-softmax-ce"]["modes"]) == ["constant"]
    report = (project / "reports" / "report.md").read_text()
    assert all(f"`{cell}`" in report for cell in CELLS)


def test_second_repro_runs_nothing(smoke):
    project, env, _ = smoke
    again = run(["dvc", "repro"], project, env)
    assert not re.search(r"^Running stage", again.stdout, re.M), again.stdout
